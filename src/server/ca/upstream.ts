import { createPrivateKey, X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createKeySigner } from '../../spiffe/index.js';
import { ConfigFileError } from '../errors.js';
import type { UpstreamAuthority } from './authority.js';

/**
 * Reads the upstream CA from disk: `cert_file` holds the upstream CA certificate first, then any
 * certificates above it up to the root; `key_file` the upstream CA's private key (PEM).
 */
export function loadUpstreamAuthority(certFile: string, keyFile: string): UpstreamAuthority {
  let chain: X509Certificate[];
  let keyPem: string;
  try {
    const pem = readFileSync(certFile, 'utf8');
    chain = [...pem.matchAll(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g)].map(
      (m) => new X509Certificate(m[0]),
    );
    keyPem = readFileSync(keyFile, 'utf8');
  } catch (error) {
    throw new ConfigFileError(`cannot read the upstream authority: ${(error as Error).message}`, error);
  }
  const first = chain[0];
  if (first === undefined)
    throw new ConfigFileError(`upstream_authority.cert_file ${certFile} holds no PEM certificate`);
  if (!first.ca)
    throw new ConfigFileError(`upstream_authority.cert_file ${certFile}: the first certificate is not a CA`);
  const privateKey = createPrivateKey(keyPem);
  const signer = createKeySigner(privateKey);
  if (!signer.publicKey.equals(first.publicKey)) {
    throw new ConfigFileError(
      `upstream_authority.key_file ${keyFile} does not belong to the first certificate of ${certFile}`,
    );
  }
  return { chain, signer };
}
