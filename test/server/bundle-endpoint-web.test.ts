import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync } from 'node:fs';
import { request } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SpiffeBundle, TrustDomain } from '../../src/spiffe/index.js';
import { cli, freePort, startTestServer, type TestServer } from '../helpers/server.js';
import { opensslCert } from '../helpers/x509.js';

const _run = promisify(execFile);

describe('bundle endpoint, https_web profile', () => {
  let server: TestServer;
  let port: number;
  let servingCert: string;

  beforeAll(async () => {
    const dir = mkdtempSync(join(tmpdir(), 'ironroot-web-'));
    const cert = join(dir, 'serving.pem');
    const key = join(dir, 'serving.key');
    await opensslCert({
      cert,
      key,
      subject: '/CN=bundle.test',
      extensions: ['subjectAltName=DNS:localhost,IP:127.0.0.1'],
    });
    servingCert = readFileSync(cert, 'utf8');
    port = await freePort();
    server = await startTestServer({
      bundle_endpoint: { address: `127.0.0.1:${port}`, profile: 'https_web', cert_file: cert, key_file: key },
    });
  });
  afterAll(async () => {
    await server.stop();
  });

  it('serves the own bundle as JSON to a client that trusts the serving certificate', async () => {
    const { body, type } = await new Promise<{ body: string; type: string }>((resolve, reject) => {
      const req = request({ host: '127.0.0.1', port, path: '/', ca: servingCert }, (res) => {
        let text = '';
        res.on('data', (c: Buffer) => {
          text += c.toString();
        });
        res.on('end', () => resolve({ body: text, type: String(res.headers['content-type']) }));
      });
      req.on('error', reject);
      req.end();
    });
    expect(type).toBe('application/json; charset=utf-8');
    const bundle = SpiffeBundle.parse(TrustDomain.parse('example.org'), body);
    const pem = (await cli(['bundle', 'show', '--admin-socket', server.socket, '--format', 'pem'])).stdout;
    expect(bundle.x509Authorities.map((c) => c.toString()).join('')).toBe(pem);
    expect(bundle.refreshHintSeconds).toBe(300);
  });
});
