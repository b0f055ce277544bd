/**
 * Errors of the verifier side. Every way that evidence from an agent can be wrong has its own stable
 * code, so the server can log `reason` and decide without matching on messages. Programmer errors
 * (a credential longer than the EK's hash, a PCR list of the wrong shape) are `TypeError`/`RangeError`
 * instead, as in the rest of the project.
 *
 * @module
 */

export type TpmVerifyErrorCode =
  /** The structure could not be decoded or has a field with an impossible value. */
  | 'ERR_TPM_MALFORMED'
  /** A key, hash, curve or symmetric algorithm that the verifier does not support. */
  | 'ERR_TPM_UNSUPPORTED_ALGORITHM'
  /** The quote's signature does not verify with the AK, or its scheme does not fit the AK. */
  | 'ERR_TPM_QUOTE_SIGNATURE'
  /** The attested data does not start with TPM_GENERATED_VALUE. */
  | 'ERR_TPM_QUOTE_MAGIC'
  /** The attested data is not a quote (TPM_ST_ATTEST_QUOTE). */
  | 'ERR_TPM_QUOTE_TYPE'
  /** extraData differs from the nonce the verifier issued. */
  | 'ERR_TPM_QUOTE_NONCE'
  /** The quote covers other PCRs than the verifier asked for. */
  | 'ERR_TPM_QUOTE_PCR_SELECTION'
  /** The reported PCR values do not hash to the quoted pcrDigest. */
  | 'ERR_TPM_QUOTE_PCR_DIGEST'
  /** The AK's object attributes or parameters are not those of a restricted signing key in the TPM. */
  | 'ERR_TPM_AK_ATTRIBUTES'
  /** The EK certificate's public key is not the EK public area the agent sent. */
  | 'ERR_TPM_EK_MISMATCH'
  /** The EK certificate does not chain to a trusted manufacturer root. */
  | 'ERR_TPM_EK_UNTRUSTED';

/**
 * Base of all verifier errors. `code` is stable; the message says what was wrong and, where the
 * caller can do something about it, what to do.
 */
export class TpmVerifyError extends Error {
  readonly code: TpmVerifyErrorCode;

  constructor(code: TpmVerifyErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = new.target.name;
  }
}

/** Narrows an unknown thrown value to a verifier error with the given code. */
export function isTpmVerifyError(err: unknown, code?: TpmVerifyErrorCode): err is TpmVerifyError {
  return err instanceof TpmVerifyError && (code === undefined || err.code === code);
}
