/**
 * TPM 2.0 response codes (Part 2 §6.6): format-0 errors and warnings, format-1 errors with the
 * handle, session or parameter they refer to, and the tpm2-tss TCTI layer's own codes.
 *
 * @module
 */
import { type TpmRcLocation, TpmResponseError } from './errors.js';

const RC_VER1 = 0x100;
const RC_FMT1 = 0x080;
const RC_WARN = 0x900;

/** Format-0 errors (TPM_RC_VER1 + n). */
const FMT0: ReadonlyMap<number, string> = new Map([
  [0x000, 'INITIALIZE'],
  [0x001, 'FAILURE'],
  [0x003, 'SEQUENCE'],
  [0x00b, 'PRIVATE'],
  [0x019, 'HMAC'],
  [0x020, 'DISABLED'],
  [0x021, 'EXCLUSIVE'],
  [0x024, 'AUTH_TYPE'],
  [0x025, 'AUTH_MISSING'],
  [0x026, 'POLICY'],
  [0x027, 'PCR'],
  [0x028, 'PCR_CHANGED'],
  [0x02d, 'UPGRADE'],
  [0x02e, 'TOO_MANY_CONTEXTS'],
  [0x02f, 'AUTH_UNAVAILABLE'],
  [0x030, 'REBOOT'],
  [0x031, 'UNBALANCED'],
  [0x042, 'COMMAND_SIZE'],
  [0x043, 'COMMAND_CODE'],
  [0x044, 'AUTHSIZE'],
  [0x045, 'AUTH_CONTEXT'],
  [0x046, 'NV_RANGE'],
  [0x047, 'NV_SIZE'],
  [0x048, 'NV_LOCKED'],
  [0x049, 'NV_AUTHORIZATION'],
  [0x04a, 'NV_UNINITIALIZED'],
  [0x04b, 'NV_SPACE'],
  [0x04c, 'NV_DEFINED'],
  [0x050, 'BAD_CONTEXT'],
  [0x051, 'CPHASH'],
  [0x052, 'PARENT'],
  [0x053, 'NEEDS_TEST'],
  [0x054, 'NO_RESULT'],
  [0x055, 'SENSITIVE'],
]);

/** Format-1 errors (TPM_RC_FMT1 + n). */
const FMT1: ReadonlyMap<number, string> = new Map([
  [0x01, 'ASYMMETRIC'],
  [0x02, 'ATTRIBUTES'],
  [0x03, 'HASH'],
  [0x04, 'VALUE'],
  [0x05, 'HIERARCHY'],
  [0x07, 'KEY_SIZE'],
  [0x08, 'MGF'],
  [0x09, 'MODE'],
  [0x0a, 'TYPE'],
  [0x0b, 'HANDLE'],
  [0x0c, 'KDF'],
  [0x0d, 'RANGE'],
  [0x0e, 'AUTH_FAIL'],
  [0x0f, 'NONCE'],
  [0x10, 'PP'],
  [0x12, 'SCHEME'],
  [0x15, 'SIZE'],
  [0x16, 'SYMMETRIC'],
  [0x17, 'TAG'],
  [0x18, 'SELECTOR'],
  [0x1a, 'INSUFFICIENT'],
  [0x1b, 'SIGNATURE'],
  [0x1c, 'KEY'],
  [0x1d, 'POLICY_FAIL'],
  [0x1f, 'INTEGRITY'],
  [0x20, 'TICKET'],
  [0x21, 'RESERVED_BITS'],
  [0x22, 'BAD_AUTH'],
  [0x23, 'EXPIRED'],
  [0x24, 'POLICY_CC'],
  [0x25, 'BINDING'],
  [0x26, 'CURVE'],
  [0x27, 'ECC_POINT'],
]);

/** Warnings (TPM_RC_WARN + n). */
const WARN: ReadonlyMap<number, string> = new Map([
  [0x01, 'CONTEXT_GAP'],
  [0x02, 'OBJECT_MEMORY'],
  [0x03, 'SESSION_MEMORY'],
  [0x04, 'MEMORY'],
  [0x05, 'SESSION_HANDLES'],
  [0x06, 'OBJECT_HANDLES'],
  [0x07, 'LOCALITY'],
  [0x08, 'YIELDED'],
  [0x09, 'CANCELED'],
  [0x0a, 'TESTING'],
  ...[0, 1, 2, 3, 4, 5, 6].map((i): [number, string] => [0x10 + i, `REFERENCE_H${i}`]),
  ...[0, 1, 2, 3, 4, 5, 6].map((i): [number, string] => [0x18 + i, `REFERENCE_S${i}`]),
  [0x20, 'NV_RATE'],
  [0x21, 'LOCKOUT'],
  [0x22, 'RETRY'],
  [0x23, 'NV_UNAVAILABLE'],
]);

/** What an operator can do about the codes seen in practice; the rest point at the spec. */
const ADVICE: ReadonlyMap<string, string> = new Map([
  ['TPM_RC_INITIALIZE', 'the TPM has not been started: send TPM2_Startup (firmware normally does)'],
  ['TPM_RC_AUTH_FAIL', 'wrong authorization value; the dictionary-attack counter was incremented'],
  ['TPM_RC_BAD_AUTH', 'wrong authorization value (no dictionary-attack counting for this object)'],
  [
    'TPM_RC_POLICY_FAIL',
    'the policy session does not satisfy the object policy (check the policy commands run)',
  ],
  ['TPM_RC_HANDLE', 'the handle does not exist or is the wrong kind for this use'],
  ['TPM_RC_INTEGRITY', 'integrity check failed: the blob was made for another key, name or TPM'],
  ['TPM_RC_VALUE', 'a value is out of range for the command'],
  ['TPM_RC_HIERARCHY', 'the hierarchy is disabled or does not fit this use'],
  ['TPM_RC_NV_LOCKED', 'the NV index is locked for this access'],
  ['TPM_RC_NV_AUTHORIZATION', 'the NV index does not allow this kind of authorization for reading'],
  ['TPM_RC_LOCKOUT', 'the TPM is in dictionary-attack lockout: wait, or reset it with the lockout auth'],
  [
    'TPM_RC_OBJECT_MEMORY',
    'no room for another object: flush transient handles, or use a resource manager (/dev/tpmrm0, tabrmd)',
  ],
  [
    'TPM_RC_SESSION_MEMORY',
    'no room for another session: flush sessions, or use a resource manager (/dev/tpmrm0, tabrmd)',
  ],
  ['TPM_RC_RETRY', 'the TPM was busy; the command may be sent again'],
  ['TPM_RC_YIELDED', 'the TPM suspended the command; it may be sent again'],
  ['TPM_RC_TESTING', 'the TPM is running self-tests; try again shortly'],
  ['TPM_RC_COMMAND_CODE', 'this TPM does not implement the command'],
]);

/** Warnings after which the same command may simply be sent again (Part 2 §6.6.3). */
export const RETRYABLE_RCS: ReadonlySet<number> = new Set([RC_WARN + 0x22, RC_WARN + 0x08, RC_WARN + 0x0a]);

export interface DecodedRc {
  readonly rc: number;
  /** `TPM_RC_POLICY_FAIL`, `TPM_RC_RETRY`, or a hex description for vendor or unknown codes. */
  readonly name: string;
  readonly location: TpmRcLocation | undefined;
  readonly isWarning: boolean;
  readonly description: string;
}

/** Decodes a TPM response code into its name and, for format-1 codes, what it refers to. */
export function decodeRc(rc: number): DecodedRc {
  const hex = `0x${rc.toString(16)}`;
  const make = (name: string, location: TpmRcLocation | undefined, isWarning: boolean): DecodedRc => ({
    rc,
    name,
    location,
    isWarning,
    description: ADVICE.get(name) ?? 'see TPM 2.0 Part 2 §6.6 for this response code',
  });
  if (rc >>> 16 !== 0) return decodeTssRc(rc);
  if (rc & RC_FMT1) {
    const name = FMT1.get(rc & 0x3f);
    const n = (rc >> 8) & 0xf;
    let location: TpmRcLocation | undefined;
    if (rc & 0x40) location = { kind: 'parameter', index: n };
    else if (n & 0x8) location = { kind: 'session', index: n & 0x7 };
    else if (n !== 0) location = { kind: 'handle', index: n };
    return make(name ? `TPM_RC_${name}` : `TPM_RC_FMT1_${hex}`, location, false);
  }
  if (!(rc & RC_VER1)) return make(`TPM 1.2 response code ${hex}`, undefined, false);
  if (rc & 0x400) return make(`vendor-defined response code ${hex}`, undefined, false);
  if ((rc & RC_WARN) === RC_WARN) {
    const name = WARN.get(rc & 0x7f);
    return make(name ? `TPM_RC_${name}` : `TPM_RC_WARN_${hex}`, undefined, true);
  }
  const name = FMT0.get(rc & 0x7f);
  return make(name ? `TPM_RC_${name}` : `TPM_RC_VER1_${hex}`, undefined, false);
}

const TSS_LAYERS: ReadonlyMap<number, string> = new Map([
  [5, 'MU'],
  [6, 'ESAPI'],
  [8, 'SYS'],
  [9, 'FEATURE'],
  [10, 'TCTI'],
  [11, 'RESMGR'],
  [12, 'RESMGR_TPM'],
]);

const TSS_BASE: ReadonlyMap<number, string> = new Map([
  [1, 'GENERAL_FAILURE'],
  [2, 'NOT_IMPLEMENTED'],
  [3, 'BAD_CONTEXT'],
  [4, 'ABI_MISMATCH'],
  [5, 'BAD_REFERENCE'],
  [6, 'INSUFFICIENT_BUFFER'],
  [7, 'BAD_SEQUENCE'],
  [8, 'NO_CONNECTION'],
  [9, 'TRY_AGAIN'],
  [10, 'IO_ERROR'],
  [11, 'BAD_VALUE'],
  [12, 'NOT_PERMITTED'],
  [16, 'BAD_SIZE'],
  [17, 'MALFORMED_RESPONSE'],
  [19, 'INSUFFICIENT_RESPONSE'],
  [20, 'INCOMPATIBLE_TCTI'],
  [21, 'NOT_SUPPORTED'],
  [22, 'BAD_TCTI_STRUCTURE'],
  [23, 'MEMORY'],
]);

/** tpm2-tss codes (layer in bits 16–23), as the TCTI functions return them. */
export function decodeTssRc(rc: number): DecodedRc {
  const layer = (rc >>> 16) & 0xff;
  const base = rc & 0xffff;
  const layerName = TSS_LAYERS.get(layer) ?? `layer ${layer}`;
  const baseName = TSS_BASE.get(base) ?? `0x${base.toString(16)}`;
  return {
    rc,
    name: `TSS2_${layerName}_RC_${baseName}`,
    location: undefined,
    isWarning: false,
    description: 'reported by tpm2-tss below the TPM (connection, device or buffer problem)',
  };
}

/** The `TpmResponseError` for a non-success code returned by `commandName`. */
export function responseError(rc: number, commandName: string): TpmResponseError {
  const d = decodeRc(rc);
  return new TpmResponseError({
    rc,
    rcName: d.name,
    location: d.location,
    commandName,
    isWarning: d.isWarning,
    description: d.description,
  });
}
