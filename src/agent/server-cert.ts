/**
 * Why the agent cannot trust the server it reached, named by cause: a server of another trust
 * domain, a bundle that no longer holds the server's CA (stale), a certificate that is not the
 * server's SVID. Misconfigurations like these never heal by retrying, so they must not look like an
 * outage.
 *
 * TLS verification failures reach the agent from grpc-js only as "unavailable" with OpenSSL's text;
 * {@link presentedChain} opens one TLS connection of its own to read the certificate the server
 * presents, which {@link judgeServerChain} then checks the way the agent's TLS check does.
 *
 * @module
 */
import type { X509Certificate } from 'node:crypto';
import { connect } from 'node:tls';
import {
  BundleSet,
  isSpiffeError,
  SpiffeId,
  TrustDomain,
  verifyX509Svid,
  X509Bundle,
} from '../spiffe/index.js';
import { peerChain } from '../workload-api/tls.js';
import { AgentError } from './errors.js';

/** Where the bundle the agent verifies the server with came from, named by the key that set it. */
export interface BundleSource {
  readonly key: 'trust_bundle' | 'data_dir' | 'trust_bundle_url';
  /** The file, or the URL. */
  readonly location: string;
  /** trust_bundle_url is configured: the agent fetches it again while the bundle is stale. */
  readonly refetchUrl?: string | undefined;
}

/** The bundle in use: its CA certificates, and where they came from. */
export interface TrustBundle {
  readonly authorities: readonly X509Certificate[];
  readonly source: BundleSource;
}

/** The server's certificate does not verify against the bundle; `presented` is what it showed. */
export class ServerTrustError extends AgentError {
  readonly presented: readonly X509Certificate[];

  constructor(code: string, message: string, presented: readonly X509Certificate[], cause?: unknown) {
    super(code, message, { cause });
    this.presented = presented;
  }
}

export function serverId(trustDomain: string): string {
  return `spiffe://${trustDomain}/ironroot/server`;
}

export function describeSource(source: BundleSource): string {
  switch (source.key) {
    case 'trust_bundle':
      return `trust_bundle ${source.location}`;
    case 'data_dir':
      return `the bundle kept in data_dir (${source.location})`;
    case 'trust_bundle_url':
      return `the bundle fetched from trust_bundle_url ${source.location}`;
  }
}

/** What the operator does about a stale bundle from `source`. */
function staleRemedy(source: BundleSource): string {
  if (source.refetchUrl !== undefined)
    return `the agent fetches trust_bundle_url ${source.refetchUrl} again at every retry and adopts a bundle only if the server's certificate verifies against it; make that URL serve the server's current bundle (ironroot-server bundle show)`;
  const target = source.key === 'trust_bundle' ? `trust_bundle ${source.location}` : source.location;
  return `write the server's current bundle to ${target} (ironroot-server bundle show --format pem, on the server), or set trust_bundle_url so the agent fetches it`;
}

/** The SPIFFE ID in a certificate's URI SAN, unverified: only to say what a refused server claims. */
function claimedId(cert: X509Certificate | undefined): SpiffeId | undefined {
  const uri = /URI:(spiffe:\/\/[^,\s]+)/.exec(cert?.subjectAltName ?? '')?.[1];
  if (uri === undefined) return undefined;
  try {
    return SpiffeId.parse(uri);
  } catch {
    return undefined;
  }
}

/**
 * Why the server's certificate chain (leaf first) is refused, or undefined when it is an
 * X.509-SVID that verifies against `bundle` and names exactly the server's ID. The ID accepted is
 * the one the SPIFFE library reads from the verified leaf; the unverified claim only refuses (a
 * server of another trust domain) and names what was refused.
 */
export function judgeServerChain(
  chain: readonly X509Certificate[],
  trustDomain: string,
  bundle: TrustBundle,
): AgentError | undefined {
  const expected = serverId(trustDomain);
  const claimed = claimedId(chain[0]);
  if (claimed !== undefined && claimed.trustDomain.name !== trustDomain)
    return new ServerTrustError(
      'ERR_AGENT_TRUST_DOMAIN_MISMATCH',
      `the server presents an SVID of trust domain ${claimed.trustDomain.name} (${claimed.toString()}), but this agent's trust_domain is ${trustDomain}: agent and server must be in one trust domain; set trust_domain: ${claimed.trustDomain.name} (with that trust domain's bundle), or point server_address at the server of ${trustDomain}`,
      chain,
    );
  let presented: string;
  try {
    const td = TrustDomain.parse(trustDomain);
    presented = verifyX509Svid(chain, new BundleSet([new X509Bundle(td, bundle.authorities)])).id.toString();
  } catch (error) {
    if (!isSpiffeError(error)) throw error;
    if (error.code === 'ERR_X509SVID_UNTRUSTED' || error.code === 'ERR_X509SVID_BAD_SIGNATURE') {
      const issuer = (chain[0]?.issuer ?? '').replaceAll('\n', ', ');
      return new ServerTrustError(
        'ERR_AGENT_TRUST_BUNDLE_STALE',
        `the server's certificate (${claimed?.toString() ?? 'no SPIFFE ID'}, issued by "${issuer}") does not chain to any of the ${bundle.authorities.length} CA certificate(s) of ${describeSource(bundle.source)} (${error.code}): that bundle is stale (the server's CA was rotated and the old one revoked, or the server was set up anew) or is another server's; ${staleRemedy(bundle.source)}`,
        chain,
        error,
      );
    }
    return new ServerTrustError(
      'ERR_AGENT_SERVER_SVID_INVALID',
      `the server's TLS certificate is not a valid X.509-SVID of ${trustDomain} (${error.code}: ${error.message}); expected the server's SVID ${expected}: refusing to talk to it`,
      chain,
      error,
    );
  }
  if (presented === expected) return undefined;
  return new ServerTrustError(
    'ERR_AGENT_SERVER_ID_MISMATCH',
    `the server presented the SVID ${presented}, not ${expected}: only the server's own ID may serve the agent API; refusing to talk to it (check server_address)`,
    chain,
  );
}

/** How long the look at the server's certificate may take; a server that answers at all answers sooner. */
const PROBE_TIMEOUT_MS = 5_000;

/**
 * The certificate chain the server at `address` (host:port) presents, read from one TLS handshake
 * that trusts nothing and sends nothing; undefined when no handshake completes (a real outage).
 */
export function presentedChain(address: string, servername: string): Promise<X509Certificate[] | undefined> {
  const match = /^\[?([^\]]+?)\]?:(\d+)$/.exec(address);
  if (match === null) return Promise.resolve(undefined);
  return new Promise((resolve) => {
    const socket = connect(
      {
        host: match[1],
        port: Number(match[2]),
        servername,
        rejectUnauthorized: false,
        ALPNProtocols: ['h2'],
      },
      () => {
        const chain = peerChain(socket.getPeerCertificate(true));
        socket.destroy();
        resolve(chain.length > 0 ? chain : undefined);
      },
    );
    socket.setTimeout(PROBE_TIMEOUT_MS, () => {
      socket.destroy();
      resolve(undefined);
    });
    socket.on('error', () => resolve(undefined));
  });
}
