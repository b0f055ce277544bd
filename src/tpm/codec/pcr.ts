/**
 * TPML_PCR_SELECTION and TPML_DIGEST (Part 2 §10.6, §10.9).
 *
 * @module
 */
import { TpmError } from '../errors.js';
import { TpmReader, TpmWriter } from './buffer.js';

/** TPMS_PCR_SELECTION: one bank and the PCRs selected in it (ascending). */
export interface PcrSelection {
  readonly hash: number;
  readonly pcrs: readonly number[];
  /** Bytes in the bitmap; PC Client TPMs use 3 (24 PCRs). */
  readonly sizeOfSelect: number;
}

/** Builds a selection with the PC Client bitmap size (3 bytes, unless a PCR above 23 is named). */
export function pcrSelection(hash: number, pcrs: readonly number[]): PcrSelection {
  for (const pcr of pcrs) {
    if (!Number.isInteger(pcr) || pcr < 0 || pcr > 255)
      throw new RangeError(`PCR index out of range: ${pcr}`);
  }
  const sorted = [...new Set(pcrs)].sort((a, b) => a - b);
  const highest = sorted.at(-1) ?? 0;
  return { hash, pcrs: sorted, sizeOfSelect: Math.max(3, Math.ceil((highest + 1) / 8)) };
}

export function writePcrSelections(w: TpmWriter, selections: readonly PcrSelection[]): void {
  w.u32(selections.length);
  for (const s of selections) {
    const bitmap = new Uint8Array(s.sizeOfSelect);
    for (const pcr of s.pcrs) {
      const byte = pcr >> 3;
      if (byte >= bitmap.byteLength) {
        throw new RangeError(`PCR ${pcr} does not fit a ${s.sizeOfSelect}-byte selection`);
      }
      bitmap[byte] = (bitmap[byte] ?? 0) | (1 << (pcr & 7));
    }
    w.u16(s.hash).u8(s.sizeOfSelect).bytes(bitmap);
  }
}

export function readPcrSelections(r: TpmReader): PcrSelection[] {
  const count = r.u32('TPML_PCR_SELECTION.count');
  // TPM_NUM_PCR_BANKS is 16 in the reference implementation; more is a corrupt count.
  if (count > 16) throw new TpmError('ERR_TPM_MALFORMED', `TPML_PCR_SELECTION: count ${count} is too large`);
  const out: PcrSelection[] = [];
  for (let i = 0; i < count; i++) {
    const hash = r.u16('TPMS_PCR_SELECTION.hash');
    const sizeOfSelect = r.u8('TPMS_PCR_SELECTION.sizeofSelect');
    const bitmap = r.bytes(sizeOfSelect, 'TPMS_PCR_SELECTION.pcrSelect');
    const pcrs: number[] = [];
    bitmap.forEach((byte, index) => {
      for (let bit = 0; bit < 8; bit++) if (byte & (1 << bit)) pcrs.push(index * 8 + bit);
    });
    out.push({ hash, pcrs, sizeOfSelect });
  }
  return out;
}

export function marshalPcrSelections(selections: readonly PcrSelection[]): Uint8Array {
  const w = new TpmWriter();
  writePcrSelections(w, selections);
  return w.finish();
}

export function parsePcrSelections(bytes: Uint8Array): PcrSelection[] {
  const r = new TpmReader(bytes);
  const out = readPcrSelections(r);
  r.end('TPML_PCR_SELECTION');
  return out;
}

/** TPML_DIGEST: a u32 count of TPM2B_DIGESTs (at most 8 per Part 2). */
export function readDigestList(r: TpmReader): Uint8Array[] {
  const count = r.u32('TPML_DIGEST.count');
  if (count > 8) throw new TpmError('ERR_TPM_MALFORMED', `TPML_DIGEST: count ${count} exceeds 8`);
  const out: Uint8Array[] = [];
  for (let i = 0; i < count; i++) out.push(r.tpm2b('TPM2B_DIGEST', 64));
  return out;
}

export function writeDigestList(w: TpmWriter, digests: readonly Uint8Array[]): void {
  if (digests.length > 8) throw new RangeError(`TPML_DIGEST holds at most 8 digests, got ${digests.length}`);
  w.u32(digests.length);
  for (const d of digests) w.tpm2b(d);
}
