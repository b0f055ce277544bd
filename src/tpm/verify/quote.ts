/**
 * Verification of a TPM2_Quote: signature, then the contents the signature vouches for.
 *
 * @module
 */
import { createHash, constants as cryptoConstants, timingSafeEqual, verify } from 'node:crypto';
import { type ClockInfo, parseAttest, type TpmsAttest } from '../codec/attest.js';
import { algName, TPM_ALG, TPM_GENERATED_VALUE, TPM_ST } from '../codec/constants.js';
import { digestSize, hashName } from '../codec/hash.js';
import type { PcrSelection } from '../codec/pcr.js';
import type { TpmtPublic } from '../codec/public.js';
import { curveCoordinateSize, publicKeyFromArea } from '../codec/public-key.js';
import { ecdsaP1363, parseSignature, type TpmtSignature } from '../codec/signature.js';
import { TpmVerifyError } from './errors.js';

/** What the agent sent and what the verifier asked for. */
export interface QuoteInput {
  /** The AK's public area, as recorded at enrolment (attribute-checked, bound by activation). */
  readonly akPublic: TpmtPublic;
  /** The TPMS_ATTEST bytes exactly as the TPM returned them (TPM2B_ATTEST body). */
  readonly attest: Uint8Array;
  /** The TPMT_SIGNATURE, decoded or as bytes. */
  readonly signature: TpmtSignature | Uint8Array;
  /** The nonce the verifier issued for this quote. */
  readonly nonce: Uint8Array;
  /** The PCR selection the verifier asked for, in the order it asked. */
  readonly pcrSelection: readonly PcrSelection[];
  /**
   * The PCR values the agent reports, in selection order: banks in the order of `pcrSelection`,
   * PCRs ascending within a bank (the order the TPM hashes them in).
   */
  readonly pcrValues: readonly Uint8Array[];
}

/** A PCR value that the quote's signature now vouches for. */
export interface QuotedPcr {
  /** TPM_ALG_ID of the bank. */
  readonly hash: number;
  readonly pcr: number;
  readonly value: Uint8Array;
}

export interface VerifiedQuote {
  /**
   * resetCount, restartCount, clock and safe. The counters are real only for an AK in the
   * endorsement hierarchy (created under the EK); under the owner hierarchy the TPM obfuscates them.
   */
  readonly clockInfo: ClockInfo;
  /** TPM firmware version (TPM_PT_FIRMWARE_VERSION_1 ‖ _2), same obfuscation caveat. */
  readonly firmwareVersion: bigint;
  readonly pcrs: readonly QuotedPcr[];
  readonly attest: TpmsAttest;
}

function fail(code: ConstructorParameters<typeof TpmVerifyError>[0], message: string): never {
  throw new TpmVerifyError(code, message);
}

/** Checks the signature scheme against the AK and verifies the signature over `attest`. */
function checkSignature(ak: TpmtPublic, sig: TpmtSignature, attest: Uint8Array): void {
  const akScheme = ak.parameters.scheme;
  if (akScheme.scheme !== TPM_ALG.NULL && (sig.sigAlg !== akScheme.scheme || sig.hash !== akScheme.hashAlg))
    fail(
      'ERR_TPM_QUOTE_SIGNATURE',
      `quote signed with ${algName(sig.sigAlg)}-${algName(sig.hash)}, but the AK's scheme is ` +
        `${algName(akScheme.scheme)}-${algName(akScheme.hashAlg)}`,
    );
  // SHA-1 collisions are practical; a quote is only as strong as the hash it signs.
  if (sig.hash === TPM_ALG.SHA1)
    fail(
      'ERR_TPM_QUOTE_SIGNATURE',
      'quote signed over SHA-1, which is not accepted; use a SHA-256 AK scheme',
    );
  const hash = hashName(sig.hash);
  const key = publicKeyFromArea(ak);
  let valid: boolean;
  if (sig.sigAlg === TPM_ALG.ECDSA) {
    if (ak.type !== TPM_ALG.ECC) fail('ERR_TPM_QUOTE_SIGNATURE', 'ECDSA signature, but the AK is an RSA key');
    const p1363 = ecdsaP1363(sig, curveCoordinateSize(ak.parameters.curveId));
    valid = verify(hash, attest, { key, dsaEncoding: 'ieee-p1363' }, p1363);
  } else {
    if (ak.type !== TPM_ALG.RSA)
      fail('ERR_TPM_QUOTE_SIGNATURE', `${algName(sig.sigAlg)} signature, but the AK is an ECC key`);
    const padding =
      sig.sigAlg === TPM_ALG.RSAPSS
        ? cryptoConstants.RSA_PKCS1_PSS_PADDING
        : cryptoConstants.RSA_PKCS1_PADDING;
    // TPMs differ in the PSS salt length they use (digest size or the maximum); any is sound.
    valid = verify(
      hash,
      attest,
      { key, padding, saltLength: cryptoConstants.RSA_PSS_SALTLEN_AUTO },
      sig.signature,
    );
  }
  if (!valid)
    fail(
      'ERR_TPM_QUOTE_SIGNATURE',
      'the quote signature does not verify with the AK; the quote was not made by this AK or was altered',
    );
}

/** One bank of a selection as `sha256:0,1,16`, PCRs ascending (the bitmap's byte length does not matter). */
function bankText(s: PcrSelection): string {
  return `${algName(s.hash)}:${[...s.pcrs].sort((a, b) => a - b).join(',') || '-'}`;
}

function describeSelection(selection: readonly PcrSelection[]): string {
  return selection.map(bankText).join('+') || 'nothing';
}

/**
 * Verifies a quote, in this order, stopping at the first failure:
 * 1. the signature verifies with the AK, with the AK's scheme (ERR_TPM_QUOTE_SIGNATURE);
 * 2. magic is TPM_GENERATED_VALUE (ERR_TPM_QUOTE_MAGIC);
 * 3. type is TPM_ST_ATTEST_QUOTE (ERR_TPM_QUOTE_TYPE);
 * 4. extraData equals the nonce, compared in constant time (ERR_TPM_QUOTE_NONCE);
 * 5. the quoted PCR selection equals the requested one (ERR_TPM_QUOTE_PCR_SELECTION);
 * 6. pcrDigest equals H(reported values concatenated in selection order), H being the signature's
 *    hash — the TPM digests PCRs with the signing scheme's hash, not the AK's nameAlg nor the bank's
 *    hash (observed on swtpm with a SHA-384-named AK signing ECDSA-SHA256) (ERR_TPM_QUOTE_PCR_DIGEST).
 *
 * The signature is checked first so that nothing in the attested data is interpreted before it is
 * known to come from the AK. It does not check the AK's attributes: do that once, at enrolment, with
 * `checkAkPublic`.
 *
 * @throws TpmVerifyError with the codes above; TpmError ERR_TPM_MALFORMED / ERR_TPM_UNSUPPORTED when
 *   the attest or signature bytes do not decode or use an algorithm this library lacks.
 */
export function verifyQuote(input: QuoteInput): VerifiedQuote {
  const sig = input.signature instanceof Uint8Array ? parseSignature(input.signature) : input.signature;
  checkSignature(input.akPublic, sig, input.attest);

  const attest = parseAttest(input.attest);
  if (attest.magic !== TPM_GENERATED_VALUE)
    fail(
      'ERR_TPM_QUOTE_MAGIC',
      `attested data starts with 0x${attest.magic.toString(16).padStart(8, '0')}, not TPM_GENERATED_VALUE ` +
        '0xff544347: it was not produced by the TPM (signed by a key that is not restricted?)',
    );
  if (attest.type !== TPM_ST.ATTEST_QUOTE || attest.attested.kind !== 'quote')
    fail(
      'ERR_TPM_QUOTE_TYPE',
      `attested data has type 0x${attest.type.toString(16)}, not TPM_ST_ATTEST_QUOTE (0x8018): it is not a quote`,
    );
  const quote = attest.attested;

  const nonceMatches =
    attest.extraData.length === input.nonce.length && timingSafeEqual(attest.extraData, input.nonce);
  if (!nonceMatches)
    fail(
      'ERR_TPM_QUOTE_NONCE',
      'the quote is not qualified by the nonce issued for it (replayed or made for another challenge); ask for a new quote',
    );

  // Same banks in the same order, each with the same PCRs.
  if (describeSelection(quote.pcrSelect) !== describeSelection(input.pcrSelection))
    fail(
      'ERR_TPM_QUOTE_PCR_SELECTION',
      `the quote covers ${describeSelection(quote.pcrSelect)}, but ${describeSelection(input.pcrSelection)} was asked for`,
    );

  // The order the TPM hashes in: banks as selected, PCRs ascending within each bank.
  const slots = quote.pcrSelect.flatMap((bank) =>
    [...bank.pcrs].sort((a, b) => a - b).map((pcr) => ({ hash: bank.hash, pcr })),
  );
  if (input.pcrValues.length !== slots.length)
    fail(
      'ERR_TPM_QUOTE_PCR_DIGEST',
      `${input.pcrValues.length} PCR values were reported for a selection of ${slots.length} PCRs`,
    );
  const pcrs: QuotedPcr[] = slots.map((slot, i) => ({
    ...slot,
    value: input.pcrValues[i] ?? new Uint8Array(0),
  }));
  const wrongSize = pcrs.find((p) => p.value.length !== digestSize(p.hash));
  if (wrongSize)
    fail(
      'ERR_TPM_QUOTE_PCR_DIGEST',
      `the value reported for ${algName(wrongSize.hash)} PCR ${wrongSize.pcr} is ${wrongSize.value.length} bytes, not ${digestSize(wrongSize.hash)}`,
    );
  const h = createHash(hashName(sig.hash));
  for (const p of pcrs) h.update(p.value);
  const digest = h.digest();
  if (digest.length !== quote.pcrDigest.length || !timingSafeEqual(digest, quote.pcrDigest))
    fail(
      'ERR_TPM_QUOTE_PCR_DIGEST',
      'the reported PCR values do not hash to the quoted pcrDigest: they are not the values the TPM quoted ' +
        '(read separately from the quote, or changed); report the values that were quoted',
    );

  return { clockInfo: attest.clockInfo, firmwareVersion: attest.firmwareVersion, pcrs, attest };
}
