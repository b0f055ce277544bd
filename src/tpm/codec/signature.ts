/**
 * TPMT_SIGNATURE (Part 2 §11.3.4) for RSASSA, RSAPSS and ECDSA, and conversion to the forms
 * node:crypto verifies.
 *
 * @module
 */
import { TpmError } from '../errors.js';
import { TpmReader, TpmWriter } from './buffer.js';
import { algName, TPM_ALG } from './constants.js';

export interface RsaSignature {
  readonly sigAlg: typeof TPM_ALG.RSASSA | typeof TPM_ALG.RSAPSS;
  readonly hash: number;
  readonly signature: Uint8Array;
}

export interface EcdsaSignature {
  readonly sigAlg: typeof TPM_ALG.ECDSA;
  readonly hash: number;
  readonly r: Uint8Array;
  readonly s: Uint8Array;
}

export type TpmtSignature = RsaSignature | EcdsaSignature;

export function readSignature(r: TpmReader): TpmtSignature {
  const sigAlg = r.u16('TPMT_SIGNATURE.sigAlg');
  if (sigAlg === TPM_ALG.RSASSA || sigAlg === TPM_ALG.RSAPSS) {
    return {
      sigAlg,
      hash: r.u16('TPMS_SIGNATURE_RSA.hash'),
      signature: r.tpm2b('TPMS_SIGNATURE_RSA.sig', 512),
    };
  }
  if (sigAlg === TPM_ALG.ECDSA) {
    const hash = r.u16('TPMS_SIGNATURE_ECC.hash');
    return { sigAlg, hash, r: r.tpm2b('signatureR', 128), s: r.tpm2b('signatureS', 128) };
  }
  throw new TpmError('ERR_TPM_UNSUPPORTED', `signature algorithm ${algName(sigAlg)} is not supported`);
}

export function writeSignature(w: TpmWriter, sig: TpmtSignature): void {
  w.u16(sig.sigAlg).u16(sig.hash);
  if (sig.sigAlg === TPM_ALG.ECDSA) w.tpm2b(sig.r).tpm2b(sig.s);
  else w.tpm2b(sig.signature);
}

/** Decodes a TPMT_SIGNATURE that fills `bytes` exactly (as `tpm2_quote -s` writes it). */
export function parseSignature(bytes: Uint8Array): TpmtSignature {
  const r = new TpmReader(bytes);
  const sig = readSignature(r);
  r.end('TPMT_SIGNATURE');
  return sig;
}

export function marshalSignature(sig: TpmtSignature): Uint8Array {
  const w = new TpmWriter();
  writeSignature(w, sig);
  return w.finish();
}

/**
 * The ECDSA signature as r‖s, each left-padded to `coordinateSize` (IEEE P1363, which node's
 * `verify` accepts with `dsaEncoding: 'ieee-p1363'`).
 */
export function ecdsaP1363(sig: EcdsaSignature, coordinateSize: number): Uint8Array {
  const out = new Uint8Array(coordinateSize * 2);
  for (const [part, at] of [
    [sig.r, 0],
    [sig.s, coordinateSize],
  ] as const) {
    if (part.byteLength > coordinateSize) {
      throw new TpmError(
        'ERR_TPM_MALFORMED',
        `ECDSA component is ${part.byteLength} bytes, longer than the curve`,
      );
    }
    out.set(part, at + coordinateSize - part.byteLength);
  }
  return out;
}
