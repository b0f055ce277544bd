/**
 * The SPIFFE bundle endpoint (SPIFFE Federation §5): GET returns the newest own bundle as a
 * SPIFFE bundle document, over HTTPS with no client authentication. Profile `https_web` serves a
 * certificate from files; `https_spiffe` serves the server's own X.509-SVID, renewed at half life
 * and at once when the CA journal changes (see CertificateAuthority.onChange).
 *
 * @module
 */

import { readFileSync } from 'node:fs';
import Fastify, { type FastifyInstance } from 'fastify';
import { splitHostPort } from '../../host/index.js';
import { newKeyPair, SpiffeId } from '../../spiffe/index.js';
import type { CertificateAuthority } from '../ca/authority.js';
import type { Clock } from '../clock.js';
import { serverSpiffeId } from '../identity.js';
import type { Logger } from '../log.js';

export interface BundleEndpointOptions {
  address: string;
  profile: 'https_web' | 'https_spiffe';
  certFile?: string;
  keyFile?: string;
  ca: CertificateAuthority;
  trustDomain: string;
  svidTtl: number;
  clock: Clock;
  logger: Logger;
}

export interface RunningEndpoint {
  app: FastifyInstance;
  port: number;
  close(): Promise<void>;
}

interface TlsMaterial {
  cert: string;
  key: string;
  /** Unix seconds after which to renew; Infinity for files. */
  renewAt: number;
}

async function serverSvid(options: BundleEndpointOptions): Promise<TlsMaterial> {
  const { privateKey, publicKey } = newKeyPair('ec', { namedCurve: 'P-256' });
  const now = Math.floor(options.clock.now() / 1000);
  const { chain, expiresAt } = await options.ca.mintServerSvid({
    spiffeId: SpiffeId.parse(serverSpiffeId(options.trustDomain)),
    publicKey,
    ttl: options.svidTtl,
  });
  return {
    cert: chain.map((c) => c.toString()).join(''),
    key: privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
    renewAt: now + Math.floor((expiresAt - now) / 2),
  };
}

export async function startBundleEndpoint(options: BundleEndpointOptions): Promise<RunningEndpoint> {
  const material: TlsMaterial =
    options.profile === 'https_web'
      ? {
          cert: readFileSync(options.certFile ?? '', 'utf8'),
          key: readFileSync(options.keyFile ?? '', 'utf8'),
          renewAt: Number.POSITIVE_INFINITY,
        }
      : await serverSvid(options);
  const app = Fastify({ logger: false, https: { cert: material.cert, key: material.key } });
  app.get('/', async (request, reply) => {
    options.logger.info({ remote: request.ip, path: request.url }, 'bundle endpoint request');
    reply.header('content-type', 'application/json');
    return options.ca.bundle().marshal();
  });
  const { host, port } = splitHostPort(options.address);
  await app.listen({ host, port });
  let timer: NodeJS.Timeout | undefined;
  let unsubscribe: (() => void) | undefined;
  if (options.profile === 'https_spiffe') {
    let current = material;
    const renew = async () => {
      const next = await serverSvid(options);
      current = next;
      app.server.setSecureContext({ cert: next.cert, key: next.key });
      options.logger.info('bundle endpoint: server SVID renewed');
    };
    timer = setInterval(() => {
      if (Math.floor(options.clock.now() / 1000) < current.renewAt) return;
      renew().catch((error: unknown) =>
        options.logger.error({ err: error }, 'bundle endpoint: cannot renew the server SVID'),
      );
    }, 5_000);
    unsubscribe = options.ca.onChange(renew);
  }
  const address = app.server.address();
  return {
    app,
    port: typeof address === 'object' && address ? address.port : port,
    async close() {
      if (timer) clearInterval(timer);
      unsubscribe?.();
      await app.close();
    },
  };
}
