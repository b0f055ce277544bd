/**
 * TPMT_PUBLIC / TPM2B_PUBLIC (Part 2 §12.2) for RSA and ECC keys, and object names.
 *
 * A decoded public area keeps the exact bytes it came from (`ParsedPublic.raw`): names and policy
 * checks must hash what the TPM produced, never a re-encoding of it.
 *
 * @module
 */
import { TpmError } from '../errors.js';
import { TpmReader, TpmWriter } from './buffer.js';
import { algName, TPM_ALG, TPMA_OBJECT } from './constants.js';
import { tpmHash } from './hash.js';

export type ObjectAttributeName = keyof typeof TPMA_OBJECT;

/** TPMA_OBJECT as named flags; every defined bit is present, reserved bits must be zero. */
export type ObjectAttributes = { readonly [K in ObjectAttributeName]: boolean };

/** TPMT_SYM_DEF_OBJECT. For `TPM_ALG.NULL`, `keyBits` and `mode` are 0 and not marshalled. */
export interface SymDefObject {
  readonly algorithm: number;
  readonly keyBits: number;
  readonly mode: number;
}

/** TPMT_RSA_SCHEME / TPMT_ECC_SCHEME / TPMT_KDF_SCHEME: a scheme and its hash (NULL when none). */
export interface AsymScheme {
  readonly scheme: number;
  readonly hashAlg: number;
}

export interface RsaParameters {
  readonly symmetric: SymDefObject;
  readonly scheme: AsymScheme;
  readonly keyBits: number;
  /** 0 means the default exponent 65537 (Part 2 §12.2.3.5). */
  readonly exponent: number;
}

export interface EccParameters {
  readonly symmetric: SymDefObject;
  readonly scheme: AsymScheme;
  readonly curveId: number;
  readonly kdf: AsymScheme;
}

export interface EccPoint {
  readonly x: Uint8Array;
  readonly y: Uint8Array;
}

interface PublicCommon {
  readonly nameAlg: number;
  readonly objectAttributes: ObjectAttributes;
  readonly authPolicy: Uint8Array;
}

export interface RsaPublic extends PublicCommon {
  readonly type: typeof TPM_ALG.RSA;
  readonly parameters: RsaParameters;
  /** The modulus (TPM2B_PUBLIC_KEY_RSA); zero-filled or empty in templates. */
  readonly unique: Uint8Array;
}

export interface EccPublic extends PublicCommon {
  readonly type: typeof TPM_ALG.ECC;
  readonly parameters: EccParameters;
  readonly unique: EccPoint;
}

/** TPMT_PUBLIC for the key types ironroot handles. */
export type TpmtPublic = RsaPublic | EccPublic;

/** A public area together with the exact TPMT_PUBLIC bytes it was decoded from. */
export interface ParsedPublic {
  readonly area: TpmtPublic;
  readonly raw: Uint8Array;
}

const NULL_SCHEME: AsymScheme = { scheme: TPM_ALG.NULL, hashAlg: TPM_ALG.NULL };

const RESERVED_ATTRIBUTE_BITS = ~Object.values(TPMA_OBJECT).reduce((a, b) => a | b, 0) >>> 0;

/** Named flags from a TPMA_OBJECT value; reserved bits set is a malformed structure. */
export function decodeObjectAttributes(value: number): ObjectAttributes {
  if ((value & RESERVED_ATTRIBUTE_BITS) >>> 0 !== 0) {
    throw new TpmError(
      'ERR_TPM_MALFORMED',
      `TPMA_OBJECT 0x${value.toString(16).padStart(8, '0')} has reserved bits set`,
    );
  }
  const flags = {} as Record<ObjectAttributeName, boolean>;
  for (const [name, bit] of Object.entries(TPMA_OBJECT) as [ObjectAttributeName, number][]) {
    flags[name] = (value & bit) !== 0;
  }
  return flags;
}

/** TPMA_OBJECT value of named flags. Flags not given are clear. */
export function encodeObjectAttributes(flags: Partial<ObjectAttributes>): number {
  let value = 0;
  for (const [name, bit] of Object.entries(TPMA_OBJECT) as [ObjectAttributeName, number][]) {
    if (flags[name]) value |= bit;
  }
  return value >>> 0;
}

/** Full attribute set from a list of names that are set: `objectAttributes('sign', 'restricted')`. */
export function objectAttributes(...set: ObjectAttributeName[]): ObjectAttributes {
  return decodeObjectAttributes(encodeObjectAttributes(Object.fromEntries(set.map((n) => [n, true]))));
}

export function writeSymDefObject(w: TpmWriter, sym: SymDefObject): void {
  w.u16(sym.algorithm);
  if (sym.algorithm === TPM_ALG.NULL) return;
  w.u16(sym.keyBits).u16(sym.mode);
}

export function readSymDefObject(r: TpmReader): SymDefObject {
  const algorithm = r.u16('TPMT_SYM_DEF_OBJECT.algorithm');
  if (algorithm === TPM_ALG.NULL) return { algorithm, keyBits: 0, mode: 0 };
  if (algorithm === TPM_ALG.XOR) {
    throw new TpmError('ERR_TPM_MALFORMED', 'TPMT_SYM_DEF_OBJECT: XOR is not allowed for objects');
  }
  return {
    algorithm,
    keyBits: r.u16('TPMT_SYM_DEF_OBJECT.keyBits'),
    mode: r.u16('TPMT_SYM_DEF_OBJECT.mode'),
  };
}

// Schemes whose details are empty (Part 2 §11.2.3.2 TPMU_ASYM_SCHEME: RSAES has TPMS_EMPTY).
const EMPTY_DETAIL_SCHEMES: ReadonlySet<number> = new Set([TPM_ALG.NULL, TPM_ALG.RSAES]);

function writeScheme(w: TpmWriter, scheme: AsymScheme): void {
  w.u16(scheme.scheme);
  if (EMPTY_DETAIL_SCHEMES.has(scheme.scheme)) return;
  if (scheme.scheme === TPM_ALG.ECDAA) {
    throw new TpmError('ERR_TPM_UNSUPPORTED', 'the ECDAA scheme is not supported');
  }
  w.u16(scheme.hashAlg);
}

function readScheme(r: TpmReader, what: string): AsymScheme {
  const scheme = r.u16(`${what}.scheme`);
  if (EMPTY_DETAIL_SCHEMES.has(scheme)) return { scheme, hashAlg: TPM_ALG.NULL };
  if (scheme === TPM_ALG.ECDAA)
    throw new TpmError('ERR_TPM_UNSUPPORTED', 'the ECDAA scheme is not supported');
  return { scheme, hashAlg: r.u16(`${what}.hashAlg`) };
}

/** Marshals a TPMT_PUBLIC. */
export function marshalPublic(area: TpmtPublic): Uint8Array {
  const w = new TpmWriter();
  writePublic(w, area);
  return w.finish();
}

export function writePublic(w: TpmWriter, area: TpmtPublic): void {
  w.u16(area.type)
    .u16(area.nameAlg)
    .u32(encodeObjectAttributes(area.objectAttributes))
    .tpm2b(area.authPolicy);
  if (area.type === TPM_ALG.RSA) {
    const p = area.parameters;
    writeSymDefObject(w, p.symmetric);
    writeScheme(w, p.scheme);
    w.u16(p.keyBits).u32(p.exponent);
    w.tpm2b(area.unique);
  } else {
    const p = area.parameters;
    writeSymDefObject(w, p.symmetric);
    writeScheme(w, p.scheme);
    w.u16(p.curveId);
    writeScheme(w, p.kdf);
    w.tpm2b(area.unique.x).tpm2b(area.unique.y);
  }
}

/** Unmarshals a TPMT_PUBLIC from the reader's current position. */
export function readPublic(r: TpmReader): TpmtPublic {
  const type = r.u16('TPMT_PUBLIC.type');
  const nameAlg = r.u16('TPMT_PUBLIC.nameAlg');
  const attrs = decodeObjectAttributes(r.u32('TPMT_PUBLIC.objectAttributes'));
  const authPolicy = r.tpm2b('TPMT_PUBLIC.authPolicy', 64);
  if (type === TPM_ALG.RSA) {
    const symmetric = readSymDefObject(r);
    const scheme = readScheme(r, 'TPMT_RSA_SCHEME');
    const keyBits = r.u16('TPMS_RSA_PARMS.keyBits');
    const exponent = r.u32('TPMS_RSA_PARMS.exponent');
    const unique = r.tpm2b('TPM2B_PUBLIC_KEY_RSA', 512);
    return {
      type,
      nameAlg,
      objectAttributes: attrs,
      authPolicy,
      parameters: { symmetric, scheme, keyBits, exponent },
      unique,
    };
  }
  if (type === TPM_ALG.ECC) {
    const symmetric = readSymDefObject(r);
    const scheme = readScheme(r, 'TPMT_ECC_SCHEME');
    const curveId = r.u16('TPMS_ECC_PARMS.curveID');
    const kdf = readScheme(r, 'TPMT_KDF_SCHEME');
    const x = r.tpm2b('TPMS_ECC_POINT.x', 128);
    const y = r.tpm2b('TPMS_ECC_POINT.y', 128);
    return {
      type,
      nameAlg,
      objectAttributes: attrs,
      authPolicy,
      parameters: { symmetric, scheme, curveId, kdf },
      unique: { x, y },
    };
  }
  throw new TpmError(
    'ERR_TPM_UNSUPPORTED',
    `public area of type ${algName(type)} is not supported (only RSA and ECC keys)`,
  );
}

/** Decodes a TPMT_PUBLIC that fills `bytes` exactly. */
export function parsePublicArea(bytes: Uint8Array): ParsedPublic {
  const r = new TpmReader(bytes);
  const area = readPublic(r);
  r.end('TPMT_PUBLIC');
  return { area, raw: Uint8Array.from(bytes) };
}

/** Decodes a TPM2B_PUBLIC (u16 size ‖ TPMT_PUBLIC), as `tpm2_createek -u`/ReadPublic produce it. */
export function parseTpm2bPublic(bytes: Uint8Array): ParsedPublic {
  const r = new TpmReader(bytes);
  const parsed = readTpm2bPublic(r);
  r.end('TPM2B_PUBLIC');
  return parsed;
}

/** Reads a TPM2B_PUBLIC from the reader's current position. */
export function readTpm2bPublic(r: TpmReader): ParsedPublic {
  return parsePublicArea(r.tpm2b('TPM2B_PUBLIC'));
}

/** Marshals a TPM2B_PUBLIC. */
export function marshalTpm2bPublic(area: TpmtPublic): Uint8Array {
  return new TpmWriter().tpm2b(marshalPublic(area)).finish();
}

/**
 * The object's Name: nameAlg (u16) ‖ H_nameAlg(TPMT_PUBLIC) (Part 1 §16). Given a `ParsedPublic`,
 * the bytes the TPM produced are hashed.
 */
export function objectName(pub: ParsedPublic | TpmtPublic): Uint8Array {
  const [nameAlg, raw] = 'raw' in pub ? [pub.area.nameAlg, pub.raw] : [pub.nameAlg, marshalPublic(pub)];
  return new TpmWriter().u16(nameAlg).bytes(tpmHash(nameAlg, raw)).finish();
}

/** A scheme that is not set; used in templates. */
export function nullScheme(): AsymScheme {
  return NULL_SCHEME;
}
