/**
 * @module
 * Domain errors of the key custody layer. Every error carries a stable `code` from a closed union so
 * callers can `switch (err.code)`, and a message that says what failed and what to do next. Programmer
 * errors (a bad argument type) stay `TypeError`s, as elsewhere in the tree.
 */

export type HsmErrorCode =
  | 'ERR_HSM_URI'
  | 'ERR_HSM_MODULE_NOT_FOUND'
  | 'ERR_HSM_TOKEN_NOT_FOUND'
  | 'ERR_HSM_PIN_SOURCE'
  | 'ERR_HSM_PIN_INCORRECT'
  | 'ERR_HSM_KEY_NOT_FOUND'
  | 'ERR_HSM_KEY_EXISTS'
  | 'ERR_HSM_KEY_ATTRIBUTES'
  | 'ERR_HSM_KEY_TEMPLATE'
  | 'ERR_HSM_KEY_TYPE'
  | 'ERR_HSM_UNAVAILABLE'
  | 'ERR_HSM_CLOSED'
  | 'ERR_HSM_FILE_MODE'
  | 'ERR_HSM_OPERATION_FAILED';

export interface HsmErrorOptions {
  /** The PKCS#11 return value by name (`CKR_PIN_INCORRECT`), when a token call caused the error. */
  readonly ckr?: string;
  readonly cause?: unknown;
}

export class HsmError extends Error {
  readonly code: HsmErrorCode;
  /** The PKCS#11 return value by name, when one caused this error. */
  readonly ckr: string | undefined;

  constructor(code: HsmErrorCode, message: string, options: HsmErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'HsmError';
    this.code = code;
    this.ckr = options.ckr;
  }
}

/** True when `error` is an HsmError, optionally with the given code. */
export function isHsmError(error: unknown, code?: HsmErrorCode): error is HsmError {
  return error instanceof HsmError && (code === undefined || error.code === code);
}
