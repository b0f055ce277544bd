/**
 * Fetches one foreign trust domain's SPIFFE bundle from its bundle endpoint (SPIFFE Federation §5).
 * Every check that can refuse the answer is a {@link FederationError} naming the URL: https only,
 * the endpoint authenticated by its profile, no redirects (§7.5.1), a size cap and a timeout, JSON
 * content, and a document that is a SPIFFE bundle of that trust domain.
 *
 * @module
 */
import { X509Certificate } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import { type RequestOptions, request } from 'node:https';
import type { DetailedPeerCertificate, PeerCertificate } from 'node:tls';
import {
  BundleSet,
  isSpiffeError,
  SpiffeBundle,
  SpiffeId,
  TrustDomain,
  verifyX509Svid,
} from '../../spiffe/index.js';
import type { FederationRelationship } from '../datastore/datastore.js';
import { FederationError } from './errors.js';

/** A bundle document is a few kilobytes per key; a megabyte is room for hundreds of authorities. */
export const MAX_BUNDLE_BYTES = 1024 * 1024;

export interface FetchBundleOptions {
  /** The foreign trust domain whose bundle the endpoint serves. */
  trustDomain: string;
  bundleEndpointUrl: string;
  profile: FederationRelationship['profile'];
  /** https_spiffe: the SPIFFE ID the endpoint's server certificate must carry. */
  endpointSpiffeId?: string;
  /** The foreign trust domain's stored bundle: its X.509 authorities authenticate an https_spiffe endpoint. */
  currentBundle?: SpiffeBundle;
  /** https_web: PEM roots to trust instead of Node's system roots. */
  webCa?: string;
  /** Abandon the request when the whole exchange takes longer. */
  timeoutMs: number;
  /** Refuse larger responses; {@link MAX_BUNDLE_BYTES} by default. */
  maxBytes?: number;
}

/**
 * Fetches and checks the bundle.
 *
 * @throws FederationError with the code of the first check that failed.
 */
export async function fetchFederatedBundle(options: FetchBundleOptions): Promise<SpiffeBundle> {
  const url = options.bundleEndpointUrl;
  const trustDomain = TrustDomain.parse(options.trustDomain);
  const target = httpsUrl(url);
  const tls = options.profile === 'https_spiffe' ? spiffeTls(options, trustDomain) : webTls(options);
  const body = await get(target, tls, options.timeoutMs, options.maxBytes ?? MAX_BUNDLE_BYTES);
  return parseBundle(url, trustDomain, body);
}

function httpsUrl(url: string): URL {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch (error) {
    throw new FederationError(
      'ERR_FEDERATION_URL_NOT_HTTPS',
      url,
      'not an absolute URL; give the bundle endpoint as https://host[:port]/path',
      { cause: error },
    );
  }
  if (parsed.protocol !== 'https:') {
    throw new FederationError(
      'ERR_FEDERATION_URL_NOT_HTTPS',
      url,
      `scheme "${parsed.protocol.replace(/:$/, '')}" refused; a bundle endpoint is served over https only (SPIFFE Federation §5.2)`,
    );
  }
  if (parsed.username !== '' || parsed.password !== '') {
    throw new FederationError(
      'ERR_FEDERATION_URL_NOT_HTTPS',
      url,
      'the URL carries user information; a bundle endpoint takes no credentials, remove them',
    );
  }
  return parsed;
}

function webTls(options: FetchBundleOptions): RequestOptions {
  // No `ca`: Node's system roots. Hostname verification stays Node's own (checkServerIdentity).
  return options.webCa === undefined ? {} : { ca: options.webCa };
}

/**
 * https_spiffe (§5.2.2.4): the server certificate must chain to the foreign trust domain's own
 * authorities and be an X.509-SVID for exactly the endpoint SPIFFE ID; the host name plays no part.
 */
function spiffeTls(options: FetchBundleOptions, trustDomain: TrustDomain): RequestOptions {
  const url = options.bundleEndpointUrl;
  if (options.endpointSpiffeId === undefined) {
    throw new FederationError(
      'ERR_FEDERATION_ENDPOINT_ID_INVALID',
      url,
      'profile https_spiffe needs the endpoint SPIFFE ID (the ID in the endpoint server certificate)',
    );
  }
  let expected: SpiffeId;
  try {
    expected = SpiffeId.parse(options.endpointSpiffeId);
  } catch (error) {
    throw new FederationError(
      'ERR_FEDERATION_ENDPOINT_ID_INVALID',
      url,
      `endpoint SPIFFE ID "${options.endpointSpiffeId}" is not a SPIFFE ID`,
      { cause: error },
    );
  }
  if (!expected.memberOf(trustDomain)) {
    // Its certificate is checked against this trust domain's authorities only (bundles never mix, F-8).
    throw new FederationError(
      'ERR_FEDERATION_ENDPOINT_ID_INVALID',
      url,
      `endpoint SPIFFE ID ${expected} is outside ${trustDomain}; give an ID of the trust domain whose bundle the endpoint serves`,
    );
  }
  const roots = options.currentBundle?.x509Authorities ?? [];
  if (roots.length === 0) {
    throw new FederationError(
      'ERR_FEDERATION_BUNDLE_MISSING',
      url,
      `no X.509 authorities of ${trustDomain} are stored to authenticate this https_spiffe endpoint; set its bundle first (bundle set --id ${trustDomain.name})`,
    );
  }
  const bundles = new BundleSet([new SpiffeBundle(trustDomain, { x509Authorities: roots })]);
  return {
    ca: roots.map((c) => c.toString()),
    checkServerIdentity: (_host: string, peer: PeerCertificate) => {
      try {
        const { id } = verifyX509Svid(peerChain(peer, bundles, trustDomain), bundles);
        if (id.equals(expected)) return undefined;
        return new FederationError(
          'ERR_FEDERATION_ENDPOINT_ID_MISMATCH',
          url,
          `the endpoint presented an SVID for ${id}, not the expected ${expected}; check the relationship's endpoint SPIFFE ID`,
        );
      } catch (error) {
        return new FederationError(
          'ERR_FEDERATION_ENDPOINT_ID_MISMATCH',
          url,
          `the endpoint certificate is not a valid X.509-SVID of ${trustDomain} (${isSpiffeError(error) ? error.code : String(error)}); the endpoint must serve an SVID for ${expected}`,
          { cause: error },
        );
      }
    },
  };
}

/** Leaf first, then what the server sent above it, without the bundle's own roots. */
function peerChain(peer: PeerCertificate, bundles: BundleSet, trustDomain: TrustDomain): X509Certificate[] {
  const roots = bundles.getX509BundleForTrustDomain(trustDomain);
  const chain: X509Certificate[] = [];
  const seen = new Set<string>();
  // Node hands checkServerIdentity the detailed certificate: each links to its issuer.
  for (
    let cert: DetailedPeerCertificate | undefined = peer as DetailedPeerCertificate;
    cert !== undefined && !seen.has(cert.fingerprint256);
    cert = cert.issuerCertificate
  ) {
    seen.add(cert.fingerprint256);
    const parsed = new X509Certificate(cert.raw);
    if (chain.length > 0 && roots?.hasAuthority(parsed)) break;
    chain.push(parsed);
  }
  return chain;
}

function get(target: URL, tls: RequestOptions, timeoutMs: number, maxBytes: number): Promise<Buffer> {
  const url = target.toString();
  return new Promise<Buffer>((resolve, reject) => {
    let settled = false;
    const finish = (error: Error | undefined, body?: Buffer) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (error) reject(error);
      else resolve(body ?? Buffer.alloc(0));
    };
    let connected = false;
    let secured = false;
    const req = request(target, {
      ...tls,
      method: 'GET',
      headers: { accept: 'application/json' },
      // A fresh connection each time: a pooled socket would skip this call's certificate checks.
      agent: false,
    });
    const timer = setTimeout(() => {
      req.destroy(
        new FederationError(
          'ERR_FEDERATION_TIMEOUT',
          url,
          `no complete answer within ${timeoutMs} ms; check that the endpoint is up and reachable`,
        ),
      );
    }, timeoutMs);
    req.on('socket', (socket) => {
      socket.once('connect', () => {
        connected = true;
      });
      socket.once('secureConnect', () => {
        secured = true;
      });
    });
    req.on('error', (error: Error & { code?: string }) => {
      if (error instanceof FederationError) return finish(error);
      if (connected && !secured) {
        return finish(
          new FederationError(
            'ERR_FEDERATION_TLS',
            url,
            `TLS handshake failed (${error.code ?? error.message}); the server certificate must chain to the trusted roots${tls.checkServerIdentity ? '' : ' and name the URL host'}`,
            { cause: error },
          ),
        );
      }
      finish(
        new FederationError(
          'ERR_FEDERATION_UNREACHABLE',
          url,
          `connection failed (${error.code ?? error.message}); check the URL and that the endpoint is up`,
          { cause: error },
        ),
      );
    });
    req.on('response', (res: IncomingMessage) => {
      const refuse = (error: FederationError) => {
        finish(error);
        res.destroy();
        req.destroy();
      };
      const status = res.statusCode ?? 0;
      if (status >= 300 && status < 400) {
        return refuse(
          new FederationError(
            'ERR_FEDERATION_REDIRECT',
            url,
            `answered ${status} to ${res.headers.location ?? '(no location)'}; redirects are never followed (SPIFFE Federation §7.5.1), configure the final URL`,
          ),
        );
      }
      if (status !== 200) {
        return refuse(
          new FederationError(
            'ERR_FEDERATION_HTTP_STATUS',
            url,
            `answered HTTP ${status}; a bundle endpoint answers 200 with the bundle`,
          ),
        );
      }
      const type = res.headers['content-type'];
      if (type !== undefined && !/^application\/([a-z0-9.+-]*\+)?json\s*(;|$)/i.test(type)) {
        return refuse(
          new FederationError(
            'ERR_FEDERATION_NOT_JSON',
            url,
            `content type "${type}" is not JSON; is the URL the bundle endpoint?`,
          ),
        );
      }
      const tooLarge = () =>
        new FederationError(
          'ERR_FEDERATION_TOO_LARGE',
          url,
          `the answer exceeds ${maxBytes} bytes; a bundle is far smaller, is the URL the bundle endpoint?`,
        );
      if (Number(res.headers['content-length'] ?? 0) > maxBytes) return refuse(tooLarge());
      const chunks: Buffer[] = [];
      let size = 0;
      res.on('data', (chunk: Buffer) => {
        size += chunk.length;
        if (size > maxBytes) return refuse(tooLarge());
        chunks.push(chunk);
      });
      res.on('end', () => finish(undefined, Buffer.concat(chunks)));
      res.on('error', (error) =>
        finish(
          new FederationError('ERR_FEDERATION_UNREACHABLE', url, 'the connection broke while reading', {
            cause: error,
          }),
        ),
      );
    });
    req.end();
  });
}

function parseBundle(url: string, trustDomain: TrustDomain, body: Buffer): SpiffeBundle {
  const text = body.toString('utf8');
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (error) {
    throw new FederationError(
      'ERR_FEDERATION_NOT_JSON',
      url,
      'the answer is not JSON; a bundle endpoint serves a SPIFFE bundle (a JWK Set)',
      { cause: error },
    );
  }
  let bundle: SpiffeBundle;
  try {
    bundle = SpiffeBundle.parse(trustDomain, text);
  } catch (error) {
    if (!isSpiffeError(error)) throw error;
    throw new FederationError(
      'ERR_FEDERATION_BAD_BUNDLE',
      url,
      `not a valid SPIFFE bundle (${error.code}): ${error.message}`,
      { cause: error },
    );
  }
  const keys = (doc as { keys?: unknown }).keys;
  if (
    Array.isArray(keys) &&
    keys.length > 0 &&
    bundle.x509Authorities.length === 0 &&
    bundle.jwtAuthorities.size === 0
  ) {
    // A SPIFFE bundle marks each key x509-svid or jwt-svid; a plain JWKS (an OIDC key set) does not.
    throw new FederationError(
      'ERR_FEDERATION_BAD_BUNDLE',
      url,
      `none of the ${keys.length} keys is a usable x509-svid or jwt-svid authority; is the URL a SPIFFE bundle endpoint rather than a JWKS?`,
    );
  }
  for (const authority of bundle.x509Authorities) {
    for (const uri of uriSans(authority)) {
      if (!uri.startsWith('spiffe://')) continue;
      let id: SpiffeId;
      try {
        id = SpiffeId.parse(uri);
      } catch {
        continue;
      }
      if (!id.memberOf(trustDomain)) {
        throw new FederationError(
          'ERR_FEDERATION_WRONG_TRUST_DOMAIN',
          url,
          `an X.509 authority names ${id}, not ${trustDomain}; the endpoint serves another trust domain's bundle, check the URL`,
        );
      }
    }
  }
  return bundle;
}

/** URI SANs as Node prints them; a value Node had to quote is skipped (no SPIFFE ID needs quoting). */
function uriSans(cert: X509Certificate): string[] {
  return (cert.subjectAltName ?? '')
    .split(', ')
    .filter((name) => name.startsWith('URI:') && !name.startsWith('URI:"'))
    .map((name) => name.slice(4));
}
