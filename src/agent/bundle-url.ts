/**
 * The bootstrap bundle as SPIRE's agent takes it: `trust_bundle_format` `pem` (CA certificates) or
 * `spiffe` (a SPIFFE bundle document, as the server's bundle endpoint serves it), from a file or
 * from `trust_bundle_url`. The URL is fetched over HTTPS verified with the system's web PKI (Node's
 * CAs plus NODE_EXTRA_CA_CERTS): nothing the agent does not trust yet is used to vouch for it.
 *
 * @module
 */
import type { X509Certificate } from 'node:crypto';
import { get } from 'node:https';
import { printableUrl } from '../host/index.js';
import { SpiffeBundle, SpiffeId, TrustDomain, X509Bundle } from '../spiffe/index.js';
import { AgentError } from './errors.js';

export type BundleFormat = 'pem' | 'spiffe';

/** A bundle is a few certificates; anything much larger is not one. */
const MAX_BYTES = 1 << 20;
const FETCH_TIMEOUT_MS = 10_000;

/** The X.509 authorities of a bundle in `format`; throws the SPIFFE library's error for bad text. */
export function parseBootstrapBundle(
  text: string,
  format: BundleFormat,
  trustDomain: string,
): X509Certificate[] {
  const td = TrustDomain.parse(trustDomain);
  return format === 'pem'
    ? [...X509Bundle.parsePem(td, text).authorities]
    : [...SpiffeBundle.parse(td, text).x509Authorities];
}

/**
 * The trust domain a CA certificate names in its SPIFFE URI SAN (`spiffe://<td>`), when it names
 * one other than `trustDomain`: such a bundle is another trust domain's.
 */
export function foreignTrustDomain(
  authorities: readonly X509Certificate[],
  trustDomain: string,
): string | undefined {
  for (const ca of authorities) {
    for (const uri of (ca.subjectAltName ?? '').matchAll(/URI:(spiffe:\/\/[^,\s]+)/g)) {
      try {
        const named = SpiffeId.parse(uri[1] ?? '').trustDomain.name;
        if (named !== trustDomain) return named;
      } catch {
        // Not a SPIFFE ID: says nothing about the trust domain.
      }
    }
  }
  return undefined;
}

function urlError(url: string, problem: string, cause?: unknown): AgentError {
  return new AgentError('ERR_AGENT_TRUST_BUNDLE_URL', `trust_bundle_url ${printableUrl(url)}: ${problem}`, {
    cause,
  });
}

function download(url: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const request = get(url, { timeout: FETCH_TIMEOUT_MS }, (response) => {
      if (response.statusCode !== 200) {
        response.resume();
        reject(urlError(url, `answered HTTP ${response.statusCode}, not 200 with the bundle; check the URL`));
        return;
      }
      const chunks: Buffer[] = [];
      let size = 0;
      response.on('data', (chunk: Buffer) => {
        size += chunk.length;
        if (size > MAX_BYTES) {
          request.destroy();
          reject(urlError(url, `answered more than ${MAX_BYTES} bytes; that is not a trust bundle`));
        } else chunks.push(chunk);
      });
      response.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
      response.on('error', (cause) =>
        reject(urlError(url, `the answer broke off (${cause.message})`, cause)),
      );
    });
    request.on('timeout', () => request.destroy(new Error(`no answer within ${FETCH_TIMEOUT_MS / 1000}s`)));
    request.on('error', (cause) =>
      reject(
        urlError(
          url,
          `cannot fetch it (${cause.message}); check the URL and the network, and that its HTTPS certificate is trusted by this host's CAs (or NODE_EXTRA_CA_CERTS)`,
          cause,
        ),
      ),
    );
  });
}

/**
 * The CA certificates served at `url`, refused by code ERR_AGENT_TRUST_BUNDLE_URL when the URL
 * cannot be fetched, serves no `format` bundle, or serves another trust domain's.
 */
export async function fetchTrustBundle(
  url: string,
  format: BundleFormat,
  trustDomain: string,
): Promise<X509Certificate[]> {
  const text = await download(url);
  let authorities: X509Certificate[];
  try {
    authorities = parseBootstrapBundle(text, format, trustDomain);
  } catch (cause) {
    throw urlError(
      url,
      `does not serve a ${format} bundle (${(cause as Error).message}); set trust_bundle_format to what it serves (pem or spiffe)`,
      cause,
    );
  }
  if (authorities.length === 0) throw urlError(url, 'serves a bundle without any X.509 CA certificate');
  const foreign = foreignTrustDomain(authorities, trustDomain);
  if (foreign !== undefined)
    throw urlError(
      url,
      `serves the bundle of trust domain ${foreign} (its CA certificate names spiffe://${foreign}), not of this agent's trust_domain ${trustDomain}: refusing it`,
    );
  return authorities;
}
