/**
 * The verifier side of TPM attestation: pure computation over evidence an agent sent, no TPM needed.
 * See docs/tpm-verifier.md for the order of the checks and the error codes.
 *
 * @module
 */
export { checkAkPublic } from './ak.js';
export { makeCredential } from './credential.js';
export {
  checkEkCertificateKey,
  type EkTrustStore,
  ekCertificateTpmInfo,
  ekPublicKeyHash,
  MAX_CHAIN_LENGTH,
  MAX_ISSUER_CHECKS,
  MAX_PRESENTED_CERTIFICATES,
  parseCertificateBundle,
  parseEkCertificate,
  type TpmDeviceInfo,
  verifyEkCertificateChain,
} from './ek-certificate.js';
export { TpmVerifyError, type TpmVerifyErrorCode } from './errors.js';
export { kdfa, kdfe } from './kdf.js';
export { type QuotedPcr, type QuoteInput, type VerifiedQuote, verifyQuote } from './quote.js';
