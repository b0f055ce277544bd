/**
 * Errors raised by `ironroot/spiffe`. Every error about bad input (an ID, a certificate, a token, a
 * bundle, an endpoint address) is a {@link SpiffeError} whose `code` names the violated rule, so
 * callers can `switch (err.code)` and tests can pin the exact rule. Programmer errors (a wrong
 * argument type) stay plain `TypeError`s.
 *
 * @module
 */

/** Every stable code a {@link SpiffeError} can carry. Codes never change meaning once published. */
export type SpiffeErrorCode =
  // SPIFFE ID (SPIFFE-ID.md §2)
  | 'ERR_SPIFFEID_EMPTY'
  | 'ERR_SPIFFEID_WRONG_SCHEME'
  | 'ERR_SPIFFEID_MISSING_TRUST_DOMAIN'
  | 'ERR_SPIFFEID_USERINFO'
  | 'ERR_SPIFFEID_PORT'
  | 'ERR_SPIFFEID_QUERY'
  | 'ERR_SPIFFEID_FRAGMENT'
  | 'ERR_SPIFFEID_PERCENT_ENCODED'
  | 'ERR_SPIFFEID_EMPTY_SEGMENT'
  | 'ERR_SPIFFEID_DOT_SEGMENT'
  | 'ERR_SPIFFEID_TRAILING_SLASH'
  | 'ERR_SPIFFEID_BAD_PATH_CHAR'
  | 'ERR_SPIFFEID_PATH_NOT_ABSOLUTE'
  | 'ERR_SPIFFEID_TOO_LONG'
  | 'ERR_SPIFFEID_MISMATCH'
  // Trust domain name (SPIFFE-ID.md §2.1, §2.3)
  | 'ERR_TRUSTDOMAIN_EMPTY'
  | 'ERR_TRUSTDOMAIN_BAD_CHAR'
  | 'ERR_TRUSTDOMAIN_UPPERCASE'
  | 'ERR_TRUSTDOMAIN_PERCENT_ENCODED'
  | 'ERR_TRUSTDOMAIN_TOO_LONG'
  // SPIFFE_ENDPOINT_SOCKET (SPIFFE_Workload_Endpoint.md §4)
  | 'ERR_ENDPOINT_EMPTY'
  | 'ERR_ENDPOINT_NOT_URI'
  | 'ERR_ENDPOINT_BAD_SCHEME'
  | 'ERR_ENDPOINT_USERINFO'
  | 'ERR_ENDPOINT_QUERY'
  | 'ERR_ENDPOINT_FRAGMENT'
  | 'ERR_ENDPOINT_UNIX_AUTHORITY'
  | 'ERR_ENDPOINT_UNIX_NOT_ABSOLUTE'
  | 'ERR_ENDPOINT_TCP_NO_HOST'
  | 'ERR_ENDPOINT_TCP_HOST_NOT_IP'
  | 'ERR_ENDPOINT_TCP_NO_PORT'
  | 'ERR_ENDPOINT_TCP_BAD_PORT'
  | 'ERR_ENDPOINT_TCP_PATH'
  // X.509-SVID (X509-SVID.md) and path validation (RFC 5280 §6)
  | 'ERR_X509SVID_PARSE'
  | 'ERR_X509SVID_NO_CERTIFICATES'
  | 'ERR_X509SVID_NO_URI_SAN'
  | 'ERR_X509SVID_MULTIPLE_URI_SANS'
  | 'ERR_X509SVID_SAN_NOT_CRITICAL'
  | 'ERR_X509SVID_ROOT_PATH'
  | 'ERR_X509SVID_LEAF_IS_CA'
  | 'ERR_X509SVID_LEAF_KEY_CERT_SIGN'
  | 'ERR_X509SVID_LEAF_CRL_SIGN'
  | 'ERR_X509SVID_LEAF_NO_DIGITAL_SIGNATURE'
  | 'ERR_X509SVID_NO_KEY_USAGE'
  | 'ERR_X509SVID_KEY_USAGE_NOT_CRITICAL'
  | 'ERR_X509SVID_EKU_MISSING_AUTH'
  | 'ERR_X509SVID_CA_NOT_CA'
  | 'ERR_X509SVID_CA_NO_KEY_CERT_SIGN'
  | 'ERR_X509SVID_CA_ID_HAS_PATH'
  | 'ERR_X509SVID_PATH_LENGTH'
  | 'ERR_X509SVID_NAME_CONSTRAINTS'
  | 'ERR_X509SVID_UNKNOWN_CRITICAL_EXTENSION'
  | 'ERR_X509SVID_NOT_YET_VALID'
  | 'ERR_X509SVID_EXPIRED'
  | 'ERR_X509SVID_BAD_SIGNATURE'
  | 'ERR_X509SVID_UNTRUSTED'
  | 'ERR_X509SVID_NO_BUNDLE'
  | 'ERR_X509SVID_BAD_PRIVATE_KEY'
  | 'ERR_X509SVID_KEY_MISMATCH'
  // PKCS#10 certificate signing requests
  | 'ERR_CSR_PARSE'
  | 'ERR_CSR_BAD_SIGNATURE'
  | 'ERR_CSR_NO_URI_SAN'
  | 'ERR_CSR_MULTIPLE_URI_SANS'
  // JWT-SVID (JWT-SVID.md)
  | 'ERR_JWTSVID_MALFORMED'
  | 'ERR_JWTSVID_UNSUPPORTED_ALG'
  | 'ERR_JWTSVID_BAD_TYP'
  | 'ERR_JWTSVID_EXTRA_HEADER'
  | 'ERR_JWTSVID_MISSING_SUB'
  | 'ERR_JWTSVID_MISSING_AUD'
  | 'ERR_JWTSVID_BAD_AUD'
  | 'ERR_JWTSVID_AUDIENCE_MISMATCH'
  | 'ERR_JWTSVID_MISSING_EXP'
  | 'ERR_JWTSVID_BAD_EXP'
  | 'ERR_JWTSVID_BAD_NBF'
  | 'ERR_JWTSVID_BAD_IAT'
  | 'ERR_JWTSVID_TOO_MANY_AUDIENCES'
  | 'ERR_JWTSVID_TOO_LARGE'
  | 'ERR_JWTSVID_EXPIRED'
  | 'ERR_JWTSVID_NOT_YET_VALID'
  | 'ERR_JWTSVID_NO_BUNDLE'
  | 'ERR_JWTSVID_UNKNOWN_KID'
  | 'ERR_JWTSVID_BAD_SIGNATURE'
  // Bundles (SPIFFE_Trust_Domain_and_Bundle.md §4)
  | 'ERR_BUNDLE_PARSE'
  | 'ERR_BUNDLE_MISSING_KEYS'
  | 'ERR_BUNDLE_BAD_SEQUENCE'
  | 'ERR_BUNDLE_BAD_REFRESH_HINT'
  | 'ERR_BUNDLE_BAD_CERTIFICATE'
  | 'ERR_BUNDLE_JWT_KEY_NO_KID'
  | 'ERR_BUNDLE_DUPLICATE_KID'
  | 'ERR_BUNDLE_WEAK_KEY';

/**
 * The one error class of this library. `code` is stable and names the rule; `message` says what was
 * wrong and what to do about it.
 *
 * @example
 * ```ts
 * try {
 *   SpiffeId.parse('spiffe://example.org/a/../b');
 * } catch (err) {
 *   if (err instanceof SpiffeError && err.code === 'ERR_SPIFFEID_DOT_SEGMENT') { ... }
 * }
 * ```
 */
export class SpiffeError extends Error {
  /** Stable identifier of the violated rule. */
  readonly code: SpiffeErrorCode;

  constructor(code: SpiffeErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'SpiffeError';
    this.code = code;
  }
}

/** True when `err` is a {@link SpiffeError}, optionally with the given code. */
export function isSpiffeError(err: unknown, code?: SpiffeErrorCode): err is SpiffeError {
  return err instanceof SpiffeError && (code === undefined || err.code === code);
}
