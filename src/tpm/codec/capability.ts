/**
 * TPMS_CAPABILITY_DATA (Part 2 §10.10): the answer of TPM2_GetCapability.
 *
 * @module
 */
import { TpmError } from '../errors.js';
import type { TpmReader } from './buffer.js';
import { TPM_CAP } from './constants.js';
import { type PcrSelection, readPcrSelections } from './pcr.js';

export interface TaggedProperty {
  readonly property: number;
  readonly value: number;
}

export interface AlgProperty {
  readonly alg: number;
  /** TPMA_ALGORITHM bits. */
  readonly attributes: number;
}

export type CapabilityData =
  | { readonly capability: typeof TPM_CAP.ALGS; readonly algorithms: AlgProperty[] }
  | { readonly capability: typeof TPM_CAP.HANDLES; readonly handles: number[] }
  | { readonly capability: typeof TPM_CAP.COMMANDS; readonly commands: number[] }
  | { readonly capability: typeof TPM_CAP.PCRS; readonly pcrs: PcrSelection[] }
  | { readonly capability: typeof TPM_CAP.TPM_PROPERTIES; readonly properties: TaggedProperty[] }
  | { readonly capability: typeof TPM_CAP.ECC_CURVES; readonly curves: number[] };

// Bounds well above what any TPM returns in one answer (MAX_CAP_BUFFER is 1024 bytes).
const MAX_ITEMS = 1024;

function count(r: TpmReader, what: string): number {
  const n = r.u32(`${what}.count`);
  if (n > MAX_ITEMS) throw new TpmError('ERR_TPM_MALFORMED', `${what}: count ${n} is too large`);
  return n;
}

function list<T>(r: TpmReader, what: string, item: () => T): T[] {
  const n = count(r, what);
  const out: T[] = [];
  for (let i = 0; i < n; i++) out.push(item());
  return out;
}

export function readCapabilityData(r: TpmReader): CapabilityData {
  const capability = r.u32('TPMS_CAPABILITY_DATA.capability');
  switch (capability) {
    case TPM_CAP.ALGS:
      return {
        capability,
        algorithms: list(r, 'TPML_ALG_PROPERTY', () => ({ alg: r.u16(), attributes: r.u32() })),
      };
    case TPM_CAP.HANDLES:
      return { capability, handles: list(r, 'TPML_HANDLE', () => r.u32()) };
    case TPM_CAP.COMMANDS:
      return { capability, commands: list(r, 'TPML_CCA', () => r.u32()) };
    case TPM_CAP.PCRS:
      return { capability, pcrs: readPcrSelections(r) };
    case TPM_CAP.TPM_PROPERTIES:
      return {
        capability,
        properties: list(r, 'TPML_TAGGED_TPM_PROPERTY', () => ({ property: r.u32(), value: r.u32() })),
      };
    case TPM_CAP.ECC_CURVES:
      return { capability, curves: list(r, 'TPML_ECC_CURVE', () => r.u16()) };
    default:
      throw new TpmError('ERR_TPM_UNSUPPORTED', `capability 0x${capability.toString(16)} is not decoded`);
  }
}
