/**
 * Errors of the TPM library. Programmer mistakes (a bad argument) throw `TypeError`/`RangeError`;
 * everything that depends on the TPM, the wire data or the platform throws a `TpmError` whose `code`
 * is stable, so callers can `switch (err.code)` and tests can assert on it.
 *
 * @module
 */

/** Every code a `TpmError` can carry. New codes are added here and nowhere else. */
export type TpmErrorCode =
  /** Bytes that do not unmarshal as the structure asked for (short, trailing data, bad selector). */
  | 'ERR_TPM_MALFORMED'
  /** A well-formed structure using an algorithm, curve or type this library does not handle. */
  | 'ERR_TPM_UNSUPPORTED'
  /** The TPM answered with a non-success response code; see `TpmResponseError`. */
  | 'ERR_TPM_RESPONSE'
  /** The TCTI could not be loaded or a transmit/receive failed at the transport level. */
  | 'ERR_TPM_TRANSPORT'
  /** The TPM did not answer within the configured time. */
  | 'ERR_TPM_TIMEOUT'
  /** The transport was used after `close()`. */
  | 'ERR_TPM_CLOSED'
  /** No endorsement key (or certificate) of the requested kind is present on the TPM. */
  | 'ERR_TPM_EK_NOT_FOUND'
  /** An EK public area differs from what it must equal (its template, or its certificate's key). */
  | 'ERR_TPM_EK_MISMATCH'
  /** PCR values kept changing between reads, so no set matching the quote could be captured. */
  | 'ERR_TPM_PCR_UNSTABLE'
  /** The TPM returned data that contradicts what was asked (e.g. a PCR bank that is not active). */
  | 'ERR_TPM_UNEXPECTED'
  /** The firmware event log could not be read from the given path. */
  | 'ERR_TPM_EVENTLOG_UNREADABLE'
  // Verifier side (src/tpm/verify): each way that an agent's evidence can be wrong.
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
  /** The AK is not a restricted signing key that cannot leave the TPM. */
  | 'ERR_TPM_AK_ATTRIBUTES'
  /** The EK certificate does not chain to a trusted manufacturer root. */
  | 'ERR_TPM_EK_UNTRUSTED'
  /** Building the EK certificate's chain hit a cap (certificates presented, chain length, issuer checks). */
  | 'ERR_TPM_EK_CHAIN_LIMIT';

export class TpmError extends Error {
  readonly code: TpmErrorCode;

  constructor(code: TpmErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = new.target.name;
  }
}

/** Where a format-1 response code points: a handle, a session or a parameter (1-based). */
export interface TpmRcLocation {
  readonly kind: 'handle' | 'session' | 'parameter';
  readonly index: number;
}

/**
 * A TPM response code other than TPM_RC_SUCCESS. `rcName` is the spec name of the base code
 * (`TPM_RC_POLICY_FAIL`), `location` the handle/session/parameter it refers to, when the TPM said.
 */
export class TpmResponseError extends TpmError {
  readonly rc: number;
  readonly rcName: string;
  readonly location: TpmRcLocation | undefined;
  readonly commandName: string;
  readonly isWarning: boolean;

  constructor(params: {
    rc: number;
    rcName: string;
    location: TpmRcLocation | undefined;
    commandName: string;
    isWarning: boolean;
    description: string;
  }) {
    const where = params.location ? ` (${params.location.kind} ${params.location.index})` : '';
    const rcHex = `0x${params.rc.toString(16).padStart(3, '0')}`;
    super(
      'ERR_TPM_RESPONSE',
      `${params.commandName} failed: ${params.rcName}${where} [${rcHex}]: ${params.description}`,
    );
    this.rc = params.rc;
    this.rcName = params.rcName;
    this.location = params.location;
    this.commandName = params.commandName;
    this.isWarning = params.isWarning;
  }
}
