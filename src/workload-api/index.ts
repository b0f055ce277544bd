/**
 * `ironroot/workload-api`: the SPIFFE Workload API — a client for Node applications (X.509 and
 * JWT-SVIDs, bundles, a self-updating {@link X509Source}, mutual TLS helpers), and the server the
 * agent runs, driven by a {@link WorkloadIdentityProvider}.
 *
 * @example
 * ```ts
 * import { X509Source, createMtlsServer } from 'ironroot/workload-api';
 * import { matchMemberOf, TrustDomain } from 'ironroot/spiffe';
 * const source = await X509Source.create(); // SPIFFE_ENDPOINT_SOCKET
 * createMtlsServer(source, matchMemberOf(TrustDomain.parse('example.org')), (socket, peer) => {}).listen(8443);
 * ```
 *
 * @module
 */
export {
  type Backoff,
  type FetchedJwtSvid,
  type FetchedX509Svid,
  parseX509SvidResponse,
  type ValidatedJwtSvid,
  WorkloadApiClient,
  type WorkloadApiClientOptions,
  type X509Context,
  type X509ContextWatcher,
} from './client.js';
export { isWorkloadApiError, WorkloadApiError, type WorkloadApiErrorCode } from './errors.js';
export type {
  CallerCredentials,
  Selector,
  WorkloadIdentities,
  WorkloadIdentityProvider,
  X509SvidMaterial,
} from './provider.js';
export {
  DEFAULT_SOCKET_PATH,
  MAX_HINT_BYTES,
  type WorkloadApiCall,
  type WorkloadApiLogger,
  WorkloadApiServer,
  type WorkloadApiServerOptions,
} from './server.js';
export { type Authorizer, connectMtls, createMtlsServer, tlsClientOptions, verifyPeer } from './tls.js';
export { X509Source, type X509SourceOptions } from './x509-source.js';
