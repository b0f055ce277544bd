/**
 * Errors of the verifier side. Every way that evidence from an agent can be wrong has its own stable
 * code (declared with the others in `../errors.ts`), so the server can log `reason` and decide
 * without matching on messages. Programmer errors (a credential longer than the EK's hash, a PCR list
 * of the wrong shape) are `TypeError`/`RangeError` instead, as in the rest of the library.
 *
 * @module
 */
import { TpmError, type TpmErrorCode } from '../errors.js';

/** The codes the verifier throws. Decoding errors from the codec (ERR_TPM_MALFORMED) pass through. */
export type TpmVerifyErrorCode = Extract<
  TpmErrorCode,
  | 'ERR_TPM_MALFORMED'
  | 'ERR_TPM_UNSUPPORTED'
  | 'ERR_TPM_QUOTE_SIGNATURE'
  | 'ERR_TPM_QUOTE_MAGIC'
  | 'ERR_TPM_QUOTE_TYPE'
  | 'ERR_TPM_QUOTE_NONCE'
  | 'ERR_TPM_QUOTE_PCR_SELECTION'
  | 'ERR_TPM_QUOTE_PCR_DIGEST'
  | 'ERR_TPM_AK_ATTRIBUTES'
  | 'ERR_TPM_EK_MISMATCH'
  | 'ERR_TPM_EK_UNTRUSTED'
  | 'ERR_TPM_EK_CHAIN_LIMIT'
>;

/** A `TpmError` raised while judging evidence; `code` is narrowed to the verifier's codes. */
export class TpmVerifyError extends TpmError {
  declare readonly code: TpmVerifyErrorCode;

  constructor(code: TpmVerifyErrorCode, message: string, options?: { cause?: unknown }) {
    super(code, message, options);
  }
}
