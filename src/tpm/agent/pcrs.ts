/**
 * Reading PCRs and quoting them so that the values returned are the ones the quote signed.
 *
 * @module
 */
import type { TpmsAttest } from '../codec/attest.js';
import { digestSize, tpmHash } from '../codec/hash.js';
import { type PcrSelection, pcrSelection } from '../codec/pcr.js';
import type { TpmtSignature } from '../codec/signature.js';
import { TpmError } from '../errors.js';
import type { LoadedObject, Tpm } from '../tpm.js';
import { AK_AUTH } from './ak.js';

/** The values of one bank's selected PCRs, in ascending PCR order. */
export interface PcrBank {
  readonly hash: number;
  readonly values: ReadonlyMap<number, Uint8Array>;
}

/**
 * Reads every PCR in `selection`. A TPM returns at most 8 digests per PCR_Read, so the remainder
 * is asked for again; if the PCR update counter moves between those calls, the set is re-read
 * from the start so it is a consistent snapshot.
 */
export async function readPcrs(
  tpm: Tpm,
  selection: readonly PcrSelection[],
  attempts = 5,
): Promise<PcrBank[]> {
  for (let attempt = 0; attempt < attempts; attempt++) {
    const values = new Map<number, Map<number, Uint8Array>>(selection.map((s) => [s.hash, new Map()]));
    let remaining = selection.filter((s) => s.pcrs.length > 0).map((s) => pcrSelection(s.hash, s.pcrs));
    let counter: number | undefined;
    let consistent = true;
    while (remaining.length > 0) {
      const result = await tpm.pcrReadOnce(remaining);
      if (counter !== undefined && result.updateCounter !== counter) {
        consistent = false;
        break;
      }
      counter = result.updateCounter;
      const digests = [...result.digests];
      for (const s of result.selection) {
        const bank = values.get(s.hash);
        for (const pcr of s.pcrs) {
          const digest = digests.shift();
          if (!bank || !digest)
            throw new TpmError('ERR_TPM_MALFORMED', 'PCR_Read returned fewer digests than PCRs');
          bank.set(pcr, digest);
        }
      }
      const next = remaining
        .map((s) =>
          pcrSelection(
            s.hash,
            s.pcrs.filter((p) => !values.get(s.hash)?.has(p)),
          ),
        )
        .filter((s) => s.pcrs.length > 0);
      if (result.digests.length === 0 && next.length > 0) {
        const banks = next.map((s) => `${s.hash.toString(16)}:${s.pcrs.join(',')}`).join(' ');
        throw new TpmError(
          'ERR_TPM_UNEXPECTED',
          `the TPM returned no values for PCRs ${banks}: is that PCR bank allocated? (tpm info lists active banks)`,
        );
      }
      remaining = next;
    }
    if (consistent) return selection.map((s) => ({ hash: s.hash, values: sorted(values.get(s.hash)) }));
  }
  throw new TpmError('ERR_TPM_PCR_UNSTABLE', `PCRs kept changing during ${attempts} read attempts`);
}

function sorted(map: Map<number, Uint8Array> | undefined): ReadonlyMap<number, Uint8Array> {
  return new Map([...(map ?? new Map<number, Uint8Array>())].sort(([a], [b]) => a - b));
}

export interface QuoteResult {
  readonly attestBytes: Uint8Array;
  readonly attest: TpmsAttest;
  readonly signatureBytes: Uint8Array;
  readonly signature: TpmtSignature;
  /** PCR values that hash to the quote's pcrDigest, bank by bank in the quote's selection order. */
  readonly pcrs: PcrBank[];
}

/** H_sig(PCR values concatenated in selection order): what the quote's pcrDigest must equal. */
export function pcrDigest(hashAlg: number, banks: readonly PcrBank[]): Uint8Array {
  return tpmHash(hashAlg, ...banks.flatMap((b) => [...b.values.values()]));
}

/**
 * Quotes `selection` with `ak`, qualified by `nonce`, and returns PCR values that match the
 * quote: PCRs are read before and after quoting, and the whole step is retried while they move
 * (a busy system extends PCR 10 all the time; keylime #585).
 */
export async function quotePcrs(
  tpm: Tpm,
  ak: LoadedObject,
  nonce: Uint8Array,
  selection: readonly PcrSelection[],
  attempts = 5,
): Promise<QuoteResult> {
  for (let attempt = 0; attempt < attempts; attempt++) {
    const before = await readPcrs(tpm, selection);
    const quote = await tpm.quote(ak.handle, AK_AUTH, nonce, selection);
    const after = await readPcrs(tpm, selection);
    if (quote.attest.attested.kind !== 'quote') {
      throw new TpmError('ERR_TPM_UNEXPECTED', 'TPM2_Quote returned an attestation that is not a quote');
    }
    const sigHash = quote.signature.hash;
    const expected = Buffer.from(quote.attest.attested.pcrDigest);
    if (
      expected.byteLength === digestSize(sigHash) &&
      expected.equals(pcrDigest(sigHash, before)) &&
      expected.equals(pcrDigest(sigHash, after))
    ) {
      return { ...quote, pcrs: after };
    }
  }
  throw new TpmError('ERR_TPM_PCR_UNSTABLE', `PCRs changed around every one of ${attempts} quotes`);
}
