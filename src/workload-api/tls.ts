/**
 * Mutual TLS between two SVID holders, for Node's `tls`: each side presents its X.509-SVID from an
 * {@link X509Source}, verifies the peer's SVID with `verifyX509Svid` against the bundle of the
 * **peer's** trust domain only (W-14), and lets an authorizer decide on the peer's SPIFFE ID.
 *
 * Application code gets a socket only after that check passed: the server hands over sockets
 * through its callback, the client through the promise of {@link connectMtls}. A refused peer's
 * socket is destroyed before the application can send or read a byte on it.
 *
 * @module
 */
import { X509Certificate } from 'node:crypto';
import {
  type ConnectionOptions,
  connect,
  createServer,
  type DetailedPeerCertificate,
  type PeerCertificate,
  type Server,
  type TLSSocket,
  type TlsOptions,
} from 'node:tls';
import { type Matcher, type SpiffeId, verifyX509Svid } from '../spiffe/index.js';
import { WorkloadApiError } from './errors.js';
import type { X509Source } from './x509-source.js';

/** Decides whether a verified peer may proceed; throws to refuse (a `Matcher` from `ironroot/spiffe`). */
export type Authorizer = Matcher;

/**
 * The peer's chain, leaf first, from the linked certificates Node reports (`checkServerIdentity`
 * receives the detailed form although its type says otherwise). The walk stops at a certificate
 * that is its own issuer.
 */
export function peerChain(peer: PeerCertificate | DetailedPeerCertificate): X509Certificate[] {
  const chain: X509Certificate[] = [];
  const seen = new Set<string>();
  let current: PeerCertificate | DetailedPeerCertificate | undefined = peer;
  while (current?.raw !== undefined && !seen.has(current.fingerprint256)) {
    seen.add(current.fingerprint256);
    chain.push(new X509Certificate(current.raw));
    current = 'issuerCertificate' in current ? current.issuerCertificate : undefined;
  }
  return chain;
}

/**
 * Verifies a peer chain as an X.509-SVID of its own trust domain and authorizes its ID.
 *
 * @throws WorkloadApiError `ERR_WORKLOADAPI_PEER_REJECTED`, with the reason as `cause`.
 */
export function verifyPeer(
  source: X509Source,
  chain: readonly X509Certificate[],
  authorize: Authorizer,
): SpiffeId {
  try {
    const { id } = verifyX509Svid(chain, source);
    authorize(id);
    return id;
  } catch (e) {
    throw new WorkloadApiError('ERR_WORKLOADAPI_PEER_REJECTED', `TLS peer refused: ${(e as Error).message}`, {
      cause: e,
    });
  }
}

function ownCredentials(source: X509Source): { key: string; cert: string } {
  const { certificates, privateKey } = source.getX509Svid().marshalPem();
  return { key: privateKey, cert: certificates };
}

/**
 * Options for `tls.connect` that present the workload's SVID and accept the server only if its
 * SVID verifies against the bundle of its trust domain and `authorize` accepts its ID.
 *
 * OpenSSL first checks the chain against every known root (`ca`, `rejectUnauthorized`), which
 * Node needs before it calls `checkServerIdentity` at all; `checkServerIdentity` then applies the
 * SPIFFE rules with the peer's own trust-domain bundle. On failure Node destroys the socket before
 * `secureConnect`. Do not pass `session`: a resumed session skips `checkServerIdentity`.
 */
export function tlsClientOptions(source: X509Source, authorize: Authorizer): ConnectionOptions {
  return {
    ...ownCredentials(source),
    ca: source.getX509Bundles().flatMap((b) => b.authorities.map((c) => c.toString())),
    rejectUnauthorized: true,
    minVersion: 'TLSv1.2',
    checkServerIdentity: (_host, peer) => {
      try {
        verifyPeer(source, peerChain(peer), authorize);
        return undefined;
      } catch (e) {
        return e as Error;
      }
    },
  };
}

/**
 * Connects with mutual TLS and resolves with the socket only once the server's SVID is verified
 * and authorized.
 *
 * @throws WorkloadApiError `ERR_WORKLOADAPI_PEER_REJECTED` for a refused server; socket errors as is.
 */
export function connectMtls(
  source: X509Source,
  authorize: Authorizer,
  options: { host: string; port: number; servername?: string },
): Promise<{ socket: TLSSocket; peerId: SpiffeId }> {
  return new Promise((resolve, reject) => {
    let peerId: SpiffeId | undefined;
    const socket = connect({
      ...tlsClientOptions(source, (id) => {
        authorize(id);
        peerId = id;
      }),
      ...options,
    });
    socket.once('error', reject);
    socket.once('secureConnect', () => {
      socket.off('error', reject);
      if (peerId === undefined) {
        socket.destroy();
        reject(new WorkloadApiError('ERR_WORKLOADAPI_PEER_REJECTED', 'TLS server was not verified'));
        return;
      }
      resolve({ socket, peerId });
    });
  });
}

/**
 * A TLS server that presents the workload's SVID (following rotations), requires a client SVID,
 * and passes `onConnection` only connections whose client SVID verifies against the bundle of its
 * trust domain and whose ID `authorize` accepts. Other connections are destroyed.
 *
 * Client certificates are requested with `rejectUnauthorized: false` because the SPIFFE check
 * (per-trust-domain bundle, SPIFFE ID rules) replaces OpenSSL's; it runs before `onConnection`.
 */
export function createMtlsServer(
  source: X509Source,
  authorize: Authorizer,
  onConnection: (socket: TLSSocket, peerId: SpiffeId) => void,
  onRefused?: (error: WorkloadApiError) => void,
): Server {
  const options: TlsOptions = {
    ...ownCredentials(source),
    requestCert: true,
    rejectUnauthorized: false,
    minVersion: 'TLSv1.2',
  };
  const server = createServer(options);
  const unsubscribe = source.onUpdate(() => {
    try {
      server.setSecureContext({ ...options, ...ownCredentials(source) });
    } catch {
      // The update carried no usable SVID; keep presenting the previous one until the next update.
    }
  });
  server.once('close', unsubscribe);
  server.on('secureConnection', (socket: TLSSocket) => {
    let peerId: SpiffeId;
    try {
      const peer = socket.getPeerCertificate(true);
      if (peer.raw === undefined) {
        throw new WorkloadApiError('ERR_WORKLOADAPI_PEER_REJECTED', 'TLS client presented no certificate');
      }
      peerId = verifyPeer(source, peerChain(peer), authorize);
    } catch (e) {
      socket.destroy();
      onRefused?.(e as WorkloadApiError);
      return;
    }
    onConnection(socket, peerId);
  });
  return server;
}
