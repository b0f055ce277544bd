import { readFileSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { opensslCert } from './x509.js';

/** The bearer token the replayed kubelet expects. */
export const KUBELET_TOKEN = 'kubelet-reader-token';

/** The recorded `/pods` answer (see test/fixtures/kubelet/README). */
const podList = readFileSync(fileURLToPath(new URL('../fixtures/kubelet/pods.json', import.meta.url)));

export interface ReplayKubelet {
  /** `https://127.0.0.1:<port>` */
  readonly url: string;
  /** The kubelet's self-signed serving certificate (`dir/kubelet.crt`), to trust as its CA. */
  readonly caFile: string;
  /** A file holding KUBELET_TOKEN (`dir/token`). */
  readonly tokenFile: string;
  /** The Authorization header of every request, in order. */
  readonly seenAuth: Array<string | undefined>;
  close(): Promise<void>;
}

/**
 * No kubelet runs here, so tests replay a recorded `/pods` response over HTTPS the way a kubelet
 * serves it: a self-signed certificate for 127.0.0.1 (made by openssl in `dir`) and a bearer token.
 */
export async function startReplayKubelet(dir: string): Promise<ReplayKubelet> {
  const keyFile = join(dir, 'kubelet.key');
  const caFile = join(dir, 'kubelet.crt');
  const tokenFile = join(dir, 'token');
  await opensslCert({
    cert: caFile,
    key: keyFile,
    subject: '/CN=node-a.dc1.example.org',
    extensions: ['subjectAltName=IP:127.0.0.1'],
  });
  writeFileSync(tokenFile, `${KUBELET_TOKEN}\n`);
  const seenAuth: Array<string | undefined> = [];
  const server = createServer({ key: readFileSync(keyFile), cert: readFileSync(caFile) }, (req, res) => {
    seenAuth.push(req.headers.authorization);
    if (req.headers.authorization !== `Bearer ${KUBELET_TOKEN}`) res.writeHead(401).end('Unauthorized');
    else if (req.url === '/pods') res.writeHead(200, { 'content-type': 'application/json' }).end(podList);
    else res.writeHead(404).end();
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `https://127.0.0.1:${(server.address() as AddressInfo).port}`,
    caFile,
    tokenFile,
    seenAuth,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}
