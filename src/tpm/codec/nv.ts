/**
 * TPMS_NV_PUBLIC / TPM2B_NV_PUBLIC (Part 2 §13.5) and NV index names.
 *
 * @module
 */
import { TpmReader, TpmWriter } from './buffer.js';
import { tpmHash } from './hash.js';

export interface NvPublic {
  readonly nvIndex: number;
  readonly nameAlg: number;
  /** TPMA_NV bits (see `TPMA_NV`). */
  readonly attributes: number;
  readonly authPolicy: Uint8Array;
  readonly dataSize: number;
}

export function readNvPublic(r: TpmReader): NvPublic {
  return r.sized('TPM2B_NV_PUBLIC', (inner) => ({
    nvIndex: inner.u32('TPMS_NV_PUBLIC.nvIndex'),
    nameAlg: inner.u16('TPMS_NV_PUBLIC.nameAlg'),
    attributes: inner.u32('TPMS_NV_PUBLIC.attributes'),
    authPolicy: inner.tpm2b('TPMS_NV_PUBLIC.authPolicy', 64),
    dataSize: inner.u16('TPMS_NV_PUBLIC.dataSize'),
  }));
}

/** Marshals a TPMS_NV_PUBLIC (without the TPM2B size). */
export function marshalNvPublic(nv: NvPublic): Uint8Array {
  return new TpmWriter()
    .u32(nv.nvIndex)
    .u16(nv.nameAlg)
    .u32(nv.attributes)
    .tpm2b(nv.authPolicy)
    .u16(nv.dataSize)
    .finish();
}

export function parseTpm2bNvPublic(bytes: Uint8Array): NvPublic {
  const r = new TpmReader(bytes);
  const nv = readNvPublic(r);
  r.end('TPM2B_NV_PUBLIC');
  return nv;
}

/** The NV index's Name: nameAlg ‖ H_nameAlg(TPMS_NV_PUBLIC). */
export function nvName(nv: NvPublic): Uint8Array {
  return new TpmWriter()
    .u16(nv.nameAlg)
    .bytes(tpmHash(nv.nameAlg, marshalNvPublic(nv)))
    .finish();
}
