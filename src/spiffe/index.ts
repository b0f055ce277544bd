/**
 * `ironroot/spiffe`: SPIFFE IDs and trust domains, X.509-SVIDs and JWT-SVIDs (issue and verify),
 * SPIFFE/X.509/JWT bundles, and Workload API endpoint addresses. Pure: no I/O. Keys are used only
 * through the {@link Signer} interface, so an HSM can hold them.
 *
 * @example
 * ```ts
 * import { SpiffeId, TrustDomain, verifyX509Svid, BundleSet, X509Bundle } from 'ironroot/spiffe';
 * const { id } = verifyX509Svid(peerChain, new BundleSet([X509Bundle.parsePem(TrustDomain.parse('example.org'), pem)]));
 * ```
 *
 * @module
 */
import './peculiar.js';

export { BundleSet, type JwtBundleSource, type X509BundleSource } from './bundle/bundle-set.js';
export { JwtBundle } from './bundle/jwt-bundle.js';
export { SpiffeBundle, type SpiffeBundleOptions } from './bundle/spiffe-bundle.js';
export { X509Bundle } from './bundle/x509-bundle.js';
export { type CsrTemplate, createCsr, type ParsedCsr, parseCsr } from './csr.js';
export {
  ENDPOINT_SOCKET_ENV,
  type EndpointAddress,
  endpointAddressFromEnv,
  parseEndpointAddress,
} from './endpoint-address.js';
export { isSpiffeError, SpiffeError, type SpiffeErrorCode } from './errors.js';
export { MAX_SPIFFE_ID_BYTES, MAX_TRUST_DOMAIN_BYTES } from './id-syntax.js';
export {
  checkJwtSvidAudience,
  JWT_SVID_ALGORITHMS,
  type JwtSvid,
  type JwtSvidAlgorithm,
  type JwtSvidHeader,
  type JwtSvidTemplate,
  MAX_JWT_SVID_AUDIENCES,
  MAX_JWT_SVID_BYTES,
  mintJwtSvid,
  parseJwtSvidInsecure,
  type ValidateJwtOptions,
  validateJwtSvid,
} from './jwt-svid.js';
export { createKeySigner } from './key-signer.js';
export { type Matcher, matchAny, matchId, matchMemberOf, matchOneOf } from './match.js';
export { newKeyPair } from './new-key-pair.js';
export type { Signer, SigningAlgorithm } from './signer.js';
export { SpiffeId } from './spiffe-id.js';
export { TrustDomain } from './trust-domain.js';
export {
  type CertificateValidity,
  mintX509Ca,
  mintX509Svid,
  mintX509SvidDer,
  type X509CaTemplate,
  type X509Issuer,
  type X509SvidTemplate,
} from './x509-mint.js';
export { X509Svid } from './x509-svid.js';
export { type VerifiedX509Svid, type VerifyX509Options, verifyX509Svid } from './x509-verify.js';
