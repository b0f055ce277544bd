/**
 * TPM public areas as node:crypto keys, so signatures can be checked and keys exported as PEM.
 *
 * @module
 */
import { createPublicKey, type JsonWebKey, type KeyObject } from 'node:crypto';
import { TpmError } from '../errors.js';
import { TPM_ALG, TPM_ECC } from './constants.js';
import type { TpmtPublic } from './public.js';

const CURVES: ReadonlyMap<number, { readonly jwk: string; readonly size: number }> = new Map([
  [TPM_ECC.NIST_P256, { jwk: 'P-256', size: 32 }],
  [TPM_ECC.NIST_P384, { jwk: 'P-384', size: 48 }],
  [TPM_ECC.NIST_P521, { jwk: 'P-521', size: 66 }],
]);

/** JWK curve name (`P-384`) of a TPM_ECC_CURVE, or undefined for curves node cannot use. */
export function curveJwkName(curveId: number): string | undefined {
  return CURVES.get(curveId)?.jwk;
}

/** Coordinate size in bytes of a TPM_ECC_CURVE this library supports. */
export function curveCoordinateSize(curveId: number): number {
  const curve = CURVES.get(curveId);
  if (!curve)
    throw new TpmError('ERR_TPM_UNSUPPORTED', `ECC curve 0x${curveId.toString(16)} is not supported`);
  return curve.size;
}

function b64u(bytes: Uint8Array): string {
  return Buffer.from(bytes).toString('base64url');
}

/** Left-pads a coordinate to the curve size: TPMs may drop leading zero bytes. */
function pad(bytes: Uint8Array, size: number): Uint8Array {
  if (bytes.byteLength >= size) return bytes;
  const out = new Uint8Array(size);
  out.set(bytes, size - bytes.byteLength);
  return out;
}

/** The public key of an RSA or ECC public area (the `unique` field must hold the key). */
export function publicKeyFromArea(area: TpmtPublic): KeyObject {
  let jwk: JsonWebKey;
  if (area.type === TPM_ALG.RSA) {
    if (area.unique.byteLength === 0)
      throw new TpmError('ERR_TPM_MALFORMED', 'RSA public area has no modulus');
    const exponent = area.parameters.exponent === 0 ? 65537 : area.parameters.exponent;
    const e = new Uint8Array(4);
    new DataView(e.buffer).setUint32(0, exponent);
    let start = 0;
    while (start < 3 && e[start] === 0) start++;
    jwk = { kty: 'RSA', n: b64u(area.unique), e: b64u(e.subarray(start)) };
  } else {
    const size = curveCoordinateSize(area.parameters.curveId);
    jwk = {
      kty: 'EC',
      crv: curveJwkName(area.parameters.curveId),
      x: b64u(pad(area.unique.x, size)),
      y: b64u(pad(area.unique.y, size)),
    };
  }
  try {
    return createPublicKey({ key: jwk, format: 'jwk' });
  } catch (cause) {
    throw new TpmError('ERR_TPM_MALFORMED', 'public area does not hold a valid public key', { cause });
  }
}
