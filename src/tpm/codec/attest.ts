/**
 * TPMS_ATTEST (Part 2 §10.12): what the TPM signs in Quote, Certify and CertifyCreation.
 *
 * @module
 */
import { TpmError } from '../errors.js';
import { TpmReader, TpmWriter } from './buffer.js';
import { TPM_ST } from './constants.js';
import { type PcrSelection, readPcrSelections, writePcrSelections } from './pcr.js';

/** TPMS_CLOCK_INFO. */
export interface ClockInfo {
  /** Milliseconds the TPM has been powered since its last TPM2_Clear. */
  readonly clock: bigint;
  readonly resetCount: number;
  readonly restartCount: number;
  /** False after an unorderly shutdown; a verifier should distrust clock monotonicity then. */
  readonly safe: boolean;
}

/** TPMS_QUOTE_INFO. */
export interface QuoteInfo {
  readonly kind: 'quote';
  readonly pcrSelect: readonly PcrSelection[];
  readonly pcrDigest: Uint8Array;
}

/** TPMS_CERTIFY_INFO. */
export interface CertifyInfo {
  readonly kind: 'certify';
  readonly name: Uint8Array;
  readonly qualifiedName: Uint8Array;
}

/** TPMS_CREATION_INFO. */
export interface CreationInfo {
  readonly kind: 'creation';
  readonly objectName: Uint8Array;
  readonly creationHash: Uint8Array;
}

/** An attestation type this codec does not decode; its bytes are kept as they were. */
export interface OtherAttestInfo {
  readonly kind: 'other';
  readonly bytes: Uint8Array;
}

export type AttestInfo = QuoteInfo | CertifyInfo | CreationInfo | OtherAttestInfo;

export interface TpmsAttest {
  /** TPM_GENERATED_VALUE for anything the TPM produced; checked by verifiers, not here. */
  readonly magic: number;
  /** TPM_ST_ATTEST_*. */
  readonly type: number;
  readonly qualifiedSigner: Uint8Array;
  readonly extraData: Uint8Array;
  readonly clockInfo: ClockInfo;
  readonly firmwareVersion: bigint;
  readonly attested: AttestInfo;
}

/**
 * Decodes a TPMS_ATTEST that fills `bytes` exactly. It does not judge the contents (magic,
 * nonce, signature): that is the verifier's job.
 */
export function parseAttest(bytes: Uint8Array): TpmsAttest {
  const r = new TpmReader(bytes);
  const magic = r.u32('TPMS_ATTEST.magic');
  const type = r.u16('TPMS_ATTEST.type');
  const qualifiedSigner = r.tpm2b('TPMS_ATTEST.qualifiedSigner');
  const extraData = r.tpm2b('TPMS_ATTEST.extraData', 64);
  const clockInfo: ClockInfo = {
    clock: r.u64('TPMS_CLOCK_INFO.clock'),
    resetCount: r.u32('TPMS_CLOCK_INFO.resetCount'),
    restartCount: r.u32('TPMS_CLOCK_INFO.restartCount'),
    safe: readYesNo(r),
  };
  const firmwareVersion = r.u64('TPMS_ATTEST.firmwareVersion');
  let attested: AttestInfo;
  switch (type) {
    case TPM_ST.ATTEST_QUOTE:
      attested = { kind: 'quote', pcrSelect: readPcrSelections(r), pcrDigest: r.tpm2b('pcrDigest', 64) };
      break;
    case TPM_ST.ATTEST_CERTIFY:
      attested = { kind: 'certify', name: r.tpm2b('name'), qualifiedName: r.tpm2b('qualifiedName') };
      break;
    case TPM_ST.ATTEST_CREATION:
      attested = {
        kind: 'creation',
        objectName: r.tpm2b('objectName'),
        creationHash: r.tpm2b('creationHash'),
      };
      break;
    default:
      attested = { kind: 'other', bytes: r.bytes(r.remaining) };
  }
  r.end('TPMS_ATTEST');
  return { magic, type, qualifiedSigner, extraData, clockInfo, firmwareVersion, attested };
}

function readYesNo(r: TpmReader): boolean {
  const v = r.u8('TPMS_CLOCK_INFO.safe');
  if (v > 1) throw new TpmError('ERR_TPM_MALFORMED', `TPMI_YES_NO value ${v} is neither 0 nor 1`);
  return v === 1;
}

/** Marshals a TPMS_ATTEST (for tests and for verifiers that build expected structures). */
export function marshalAttest(a: TpmsAttest): Uint8Array {
  const w = new TpmWriter()
    .u32(a.magic)
    .u16(a.type)
    .tpm2b(a.qualifiedSigner)
    .tpm2b(a.extraData)
    .u64(a.clockInfo.clock)
    .u32(a.clockInfo.resetCount)
    .u32(a.clockInfo.restartCount)
    .u8(a.clockInfo.safe ? 1 : 0)
    .u64(a.firmwareVersion);
  const info = a.attested;
  switch (info.kind) {
    case 'quote':
      writePcrSelections(w, info.pcrSelect);
      w.tpm2b(info.pcrDigest);
      break;
    case 'certify':
      w.tpm2b(info.name).tpm2b(info.qualifiedName);
      break;
    case 'creation':
      w.tpm2b(info.objectName).tpm2b(info.creationHash);
      break;
    case 'other':
      w.bytes(info.bytes);
  }
  return w.finish();
}
