/**
 * The key and signature of a CSR: the key decoded once, the signature checked with node:crypto over
 * the exact CertificationRequestInfo bytes (see csr-reader.ts for the structure).
 *
 * @module
 */
import { createPublicKey, type KeyObject, constants as sslConstants } from 'node:crypto';
import { checkDerTree, DerReader, oidText, readOne, smallUnsigned, TAG } from '../der/index.js';
import type { CsrParts } from './csr-reader.js';
import { verifyOffThread } from './verify-async.js';

/**
 * The SubjectPublicKeyInfo of an uncompressed EC point on each WebCrypto curve, up to the point's
 * coordinates: the form nearly every CSR carries.
 */
const EC_SPKI_PREFIXES = [
  {
    crv: 'P-256',
    size: 32,
    prefix: Buffer.from('3059301306072a8648ce3d020106082a8648ce3d03010703420004', 'hex'),
  },
  { crv: 'P-384', size: 48, prefix: Buffer.from('3076301006072a8648ce3d020106052b8104002203620004', 'hex') },
  {
    crv: 'P-521',
    size: 66,
    prefix: Buffer.from('30819b301006072a8648ce3d020106052b810400230381860004', 'hex'),
  },
];

/**
 * The key of a SubjectPublicKeyInfo. OpenSSL 3 decodes DER keys through its generic provider
 * decoders, which costs about twice as much as importing the same EC point from its JWK form; the
 * key and its checks (the point must be on the curve) are the same, so the common EC forms go that
 * way and everything else through the DER decoder.
 *
 * @throws Error (from node:crypto) when the key does not decode.
 */
export function publicKeyOf(spki: Uint8Array): KeyObject {
  const bytes = Buffer.from(spki.buffer, spki.byteOffset, spki.byteLength);
  for (const { crv, size, prefix } of EC_SPKI_PREFIXES) {
    if (bytes.length === prefix.length + 2 * size && bytes.subarray(0, prefix.length).equals(prefix)) {
      const x = bytes.subarray(prefix.length, prefix.length + size).toString('base64url');
      const y = bytes.subarray(prefix.length + size).toString('base64url');
      return createPublicKey({ key: { kty: 'EC', crv, x, y }, format: 'jwk' });
    }
  }
  return createPublicKey({ key: bytes, format: 'der', type: 'spki' });
}

/** A signature algorithm (or its parameters) that CSRs are not accepted with. */
export class SignatureAlgorithmError extends Error {
  override readonly name = 'SignatureAlgorithmError';
}

/** How node:crypto verifies one signature algorithm, and the key it needs. */
interface Verification {
  /** The digest, or null for EdDSA (which hashes inside the algorithm). */
  readonly hash: string | null;
  readonly key: 'ec' | 'rsa' | 'ed25519';
  readonly pssSaltLength?: number;
}

const HASHES: Record<string, string> = {
  '2.16.840.1.101.3.4.2.1': 'sha256',
  '2.16.840.1.101.3.4.2.2': 'sha384',
  '2.16.840.1.101.3.4.2.3': 'sha512',
};

const ECDSA: Record<string, string> = {
  '1.2.840.10045.4.3.2': 'sha256',
  '1.2.840.10045.4.3.3': 'sha384',
  '1.2.840.10045.4.3.4': 'sha512',
};

const RSA_PKCS1: Record<string, string> = {
  '1.2.840.113549.1.1.11': 'sha256',
  '1.2.840.113549.1.1.12': 'sha384',
  '1.2.840.113549.1.1.13': 'sha512',
};

/** Ed25519 only: Ed448 CSRs were refused before (WebCrypto here has no Ed448). */
const EDDSA: Record<string, 'ed25519'> = { '1.3.101.112': 'ed25519' };

const RSASSA_PSS = '1.2.840.113549.1.1.10';
const MGF1 = '1.2.840.113549.1.1.8';

/** The curves WebCrypto's ECDSA accepts, the ones CSRs were verified with before. */
const EC_CURVES = new Set(['prime256v1', 'secp384r1', 'secp521r1']);

const NULL_PARAMS = Uint8Array.of(TAG.NULL, 0);
const isNull = (params: Uint8Array | undefined): boolean =>
  params !== undefined && Buffer.from(params).equals(NULL_PARAMS);

/**
 * The signature algorithms accepted on CSRs: ECDSA and RSA (PKCS#1 v1.5 and PSS) with SHA-256,
 * SHA-384 or SHA-512, and Ed25519. Throws naming anything else (SHA-1 included).
 */
function verificationOf(oid: string, params: Uint8Array | undefined): Verification {
  const ecdsa = ECDSA[oid];
  if (ecdsa !== undefined) {
    // RFC 5758 §3.2: the parameters field is absent.
    if (params !== undefined)
      throw new SignatureAlgorithmError(`ECDSA signature algorithm ${oid} with parameters`);
    return { hash: ecdsa, key: 'ec' };
  }
  const eddsa = EDDSA[oid];
  if (eddsa !== undefined) {
    // RFC 8410 §3: the parameters are absent.
    if (params !== undefined)
      throw new SignatureAlgorithmError(`EdDSA signature algorithm ${oid} with parameters`);
    return { hash: null, key: eddsa };
  }
  const pkcs1 = RSA_PKCS1[oid];
  if (pkcs1 !== undefined) {
    // RFC 4055 §5: NULL, though some encoders leave it out.
    if (params !== undefined && !isNull(params))
      throw new SignatureAlgorithmError(`RSA signature algorithm ${oid} with parameters`);
    return { hash: pkcs1, key: 'rsa' };
  }
  if (oid === RSASSA_PSS && params !== undefined) {
    try {
      return pssVerification(params);
    } catch (error) {
      if (error instanceof SignatureAlgorithmError) throw error;
      throw new SignatureAlgorithmError(`malformed RSASSA-PSS parameters: ${(error as Error).message}`);
    }
  }
  throw new SignatureAlgorithmError(`unsupported CSR signature algorithm ${oid}`);
}

/**
 * RSASSA-PSS-params (RFC 4055 §3.1) with an explicit SHA-2 hash, MGF1 over the same hash (as
 * WebCrypto has it), a salt length and the trailer field 1. The SHA-1 defaults are not accepted.
 */
function pssVerification(params: Uint8Array): Verification {
  const fields = new DerReader(
    readOne(params, TAG.SEQUENCE, 'RSASSA-PSS-params').content,
    'RSASSA-PSS-params',
  );
  const hashField = fields.optional(0xa0, 'hashAlgorithm');
  const mgfField = fields.optional(0xa1, 'maskGenAlgorithm');
  const saltField = fields.optional(0xa2, 'saltLength');
  const trailerField = fields.optional(0xa3, 'trailerField');
  fields.end();
  if (hashField === undefined || mgfField === undefined)
    throw new SignatureAlgorithmError('RSASSA-PSS with SHA-1 defaults');
  const hash = hashAlgorithm(readOne(hashField.content, TAG.SEQUENCE, 'hashAlgorithm').content);
  const mgf = new DerReader(readOne(mgfField.content, TAG.SEQUENCE, 'maskGenAlgorithm').content, 'mgf');
  if (oidText(mgf.read(TAG.OID, 'algorithm').content, 'mgf') !== MGF1)
    throw new SignatureAlgorithmError('RSASSA-PSS without MGF1');
  const mgfHash = hashAlgorithm(mgf.read(TAG.SEQUENCE, 'MGF1 hash').content);
  mgf.end();
  if (mgfHash !== hash) throw new SignatureAlgorithmError(`RSASSA-PSS with ${hash} but MGF1 over ${mgfHash}`);
  const salt =
    saltField === undefined
      ? 20
      : smallUnsigned(readOne(saltField.content, TAG.INTEGER, 'saltLength'), 'saltLength');
  if (trailerField !== undefined) {
    const trailer = smallUnsigned(readOne(trailerField.content, TAG.INTEGER, 'trailerField'), 'trailer');
    if (trailer !== 1) throw new SignatureAlgorithmError(`RSASSA-PSS trailer field ${trailer}`);
  }
  return { hash, key: 'rsa', pssSaltLength: salt };
}

/** A hash AlgorithmIdentifier's name; SHA-2 only, parameters NULL or absent. */
function hashAlgorithm(content: Uint8Array): string {
  const alg = new DerReader(content, 'hash algorithm');
  const oid = oidText(alg.read(TAG.OID, 'algorithm').content, 'hash algorithm');
  const params = alg.done ? undefined : alg.read(undefined, 'parameters').encoded;
  alg.end();
  const hash = HASHES[oid];
  if (hash === undefined || (params !== undefined && !isNull(params))) {
    throw new SignatureAlgorithmError(`unsupported hash algorithm ${oid} in RSASSA-PSS`);
  }
  return hash;
}

/**
 * ECDSA-Sig-Value ::= SEQUENCE { r INTEGER, s INTEGER } in DER, as OpenSSL requires; checked first
 * so that a malformed value is named as such rather than as a signature that does not verify.
 */
function checkEcdsaSignature(signature: Uint8Array): void {
  checkDerTree(signature, 'ECDSA-Sig-Value');
  const fields = new DerReader(
    readOne(signature, TAG.SEQUENCE, 'ECDSA-Sig-Value').content,
    'ECDSA-Sig-Value',
  );
  fields.read(TAG.INTEGER, 'r');
  fields.read(TAG.INTEGER, 's');
  fields.end();
}

/**
 * Resolves to true when the CSR's signature verifies with `publicKey` over the exact
 * CertificationRequestInfo bytes; otherwise to the reason (unsupported algorithm, a key that does
 * not fit it, or a signature that does not verify), for the refusal's cause. The verification itself
 * runs on libuv's thread pool: a server answering several agents at once checks their CSRs on the
 * other cores while its event loop goes on.
 */
export async function verifiesCsr(csr: CsrParts, publicKey: KeyObject): Promise<true | Error> {
  try {
    const how = verificationOf(csr.signatureOid, csr.signatureParams);
    const type = publicKey.asymmetricKeyType;
    if (type !== how.key) throw new Error(`a ${type} key cannot check a ${how.key} signature`);
    if (type === 'ec' && !EC_CURVES.has(publicKey.asymmetricKeyDetails?.namedCurve ?? '')) {
      throw new Error(`EC curve ${publicKey.asymmetricKeyDetails?.namedCurve} is not P-256, P-384 or P-521`);
    }
    if (how.key === 'ec') checkEcdsaSignature(csr.signature);
    const key =
      how.pssSaltLength === undefined
        ? { key: publicKey, dsaEncoding: 'der' as const }
        : { key: publicKey, padding: sslConstants.RSA_PKCS1_PSS_PADDING, saltLength: how.pssSaltLength };
    const verified = await verifyOffThread(how.hash, csr.info, key, csr.signature);
    return verified ? true : new Error('signature does not verify');
  } catch (error) {
    return error instanceof Error ? error : new Error(String(error));
  }
}
