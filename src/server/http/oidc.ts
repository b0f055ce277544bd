/**
 * OIDC discovery for JWT-SVIDs, so OIDC relying parties (cloud IAM federation and the like) can
 * verify them: `/.well-known/openid-configuration` names the issuer and `/keys`, which serves the
 * JWT authorities of the own bundle as a JWKS. HTTPS with a certificate from files, or plain HTTP
 * for a TLS-terminating proxy in front.
 *
 * @module
 */
import { readFileSync } from 'node:fs';
import Fastify, { type FastifyInstance } from 'fastify';
import { splitHostPort } from '../../host/index.js';
import type { CertificateAuthority } from '../ca/authority.js';
import type { Logger } from '../log.js';

export interface OidcOptions {
  address: string;
  issuer: string;
  certFile?: string;
  keyFile?: string;
  ca: CertificateAuthority;
  logger: Logger;
}

const ALGORITHMS = ['ES256', 'ES384', 'RS256'];

export async function startOidcDiscovery(
  options: OidcOptions,
): Promise<{ app: FastifyInstance; port: number; close(): Promise<void> }> {
  const https =
    options.certFile && options.keyFile
      ? { cert: readFileSync(options.certFile, 'utf8'), key: readFileSync(options.keyFile, 'utf8') }
      : undefined;
  const app = Fastify({ logger: false, https: https ?? null });
  const base = options.issuer.replace(/\/+$/, '');
  app.get('/.well-known/openid-configuration', async () => ({
    issuer: options.issuer,
    jwks_uri: `${base}/keys`,
    authorization_endpoint: '',
    response_types_supported: ['id_token'],
    subject_types_supported: ['public'],
    id_token_signing_alg_values_supported: ALGORITHMS,
  }));
  app.get('/keys', async () => ({
    keys: [...options.ca.bundle().jwtAuthorities].map(([kid, key]) => ({
      ...key.export({ format: 'jwk' }),
      kid,
      use: 'sig',
    })),
  }));
  const { host, port } = splitHostPort(options.address);
  await app.listen({ host, port });
  const address = app.server.address();
  return {
    app,
    port: typeof address === 'object' && address ? address.port : port,
    close: () => app.close(),
  };
}
