/**
 * Endorsement-key templates and policies of the TCG EK Credential Profile (v2.4+, Annex B), the
 * same ones `tpm2_createek` uses. Creating a primary key from one of these in the endorsement
 * hierarchy always yields the same key on one TPM, which is what the EK certificate certifies.
 *
 * @module
 */
import { TpmWriter } from '../codec/buffer.js';
import { TPM_ALG, TPM_CC, TPM_ECC, TPM_RH } from '../codec/constants.js';
import { digestSize, tpmHash } from '../codec/hash.js';
import { type ObjectAttributes, objectAttributes, type TpmtPublic } from '../codec/public.js';

export type EkKind = 'rsa2048' | 'ecc-p256' | 'rsa2048-high' | 'ecc-p256-high' | 'ecc-p384-high';

export interface EkProfile {
  readonly kind: EkKind;
  /** NV index of the certificate for this template. */
  readonly certIndex: number;
  /** Where the platform conventionally persists this EK (0 when the profile names none). */
  readonly persistentHandle: number;
  /** High-range templates need PolicySecret(endorsement) + PolicyOR(A, C); low range PolicySecret. */
  readonly highRange: boolean;
  readonly template: TpmtPublic;
}

/**
 * PolicyA = TPM2_PolicySecret(TPM_RH_ENDORSEMENT): the digest starts at zero, is extended with
 * commandCode ‖ authHandle's name (a permanent handle's name is the handle), then with the empty
 * policyRef (Part 3 §23.4, PolicySecret updates the digest twice).
 */
export function policyA(hashAlg: number): Uint8Array {
  const zero = new Uint8Array(digestSize(hashAlg));
  const ccAndName = new TpmWriter().u32(TPM_CC.PolicySecret).u32(TPM_RH.ENDORSEMENT).finish();
  return tpmHash(hashAlg, tpmHash(hashAlg, zero, ccAndName));
}

/**
 * PolicyC = PolicyAuthorizeNV over the EK policy NV index (EK Credential Profile Annex B.6.4);
 * it depends on that index's name, so the published values are used.
 */
const POLICY_C: ReadonlyMap<number, Uint8Array> = new Map([
  [TPM_ALG.SHA256, Buffer.from('3767e2edd43ff45a3a7e1eaefcef78643dca964632e7aad82c673a30d8633fde', 'hex')],
  [
    TPM_ALG.SHA384,
    Buffer.from(
      'd6032ce61f2fb3c240eb3cf6a33237ef2b6a16f4293c22b455e261cffd217ad5b4947c2d73e63005eed2dc2b3593d165',
      'hex',
    ),
  ],
]);

/** The two branches PolicyOR folds into PolicyB, in the order the TPM hashes them. */
export function highRangeBranches(hashAlg: number): [Uint8Array, Uint8Array] {
  const c = POLICY_C.get(hashAlg);
  if (!c) throw new RangeError(`no EK PolicyC for hash 0x${hashAlg.toString(16)}`);
  return [policyA(hashAlg), c];
}

/** PolicyB = PolicyOR(PolicyA, PolicyC): H(0ⁿ ‖ TPM_CC_PolicyOR ‖ A ‖ C). */
export function policyB(hashAlg: number): Uint8Array {
  const [a, c] = highRangeBranches(hashAlg);
  const cc = new TpmWriter().u32(TPM_CC.PolicyOR).finish();
  return tpmHash(hashAlg, new Uint8Array(digestSize(hashAlg)), cc, a, c);
}

// Low range: userWithAuth clear, so every use needs the policy. High range adds userWithAuth.
const LOW_ATTRIBUTES: ObjectAttributes = objectAttributes(
  'fixedTPM',
  'fixedParent',
  'sensitiveDataOrigin',
  'adminWithPolicy',
  'restricted',
  'decrypt',
);
const HIGH_ATTRIBUTES: ObjectAttributes = { ...LOW_ATTRIBUTES, userWithAuth: true };
const NULL_SCHEME = { scheme: TPM_ALG.NULL, hashAlg: TPM_ALG.NULL };

function aesCfb(keyBits: number) {
  return { algorithm: TPM_ALG.AES, keyBits, mode: TPM_ALG.CFB };
}

function rsaTemplate(high: boolean): TpmtPublic {
  return {
    type: TPM_ALG.RSA,
    nameAlg: TPM_ALG.SHA256,
    objectAttributes: high ? HIGH_ATTRIBUTES : LOW_ATTRIBUTES,
    authPolicy: high ? policyB(TPM_ALG.SHA256) : policyA(TPM_ALG.SHA256),
    parameters: { symmetric: aesCfb(128), scheme: NULL_SCHEME, keyBits: 2048, exponent: 0 },
    // Low range fills unique with 256 zero bytes; high-range templates leave it empty.
    unique: new Uint8Array(high ? 0 : 256),
  };
}

function eccTemplate(curve: 'p256' | 'p384', high: boolean): TpmtPublic {
  const p384 = curve === 'p384';
  const hashAlg = p384 ? TPM_ALG.SHA384 : TPM_ALG.SHA256;
  const fill = high ? 0 : 32;
  return {
    type: TPM_ALG.ECC,
    nameAlg: hashAlg,
    objectAttributes: high ? HIGH_ATTRIBUTES : LOW_ATTRIBUTES,
    authPolicy: high ? policyB(hashAlg) : policyA(hashAlg),
    parameters: {
      symmetric: aesCfb(p384 ? 256 : 128),
      scheme: NULL_SCHEME,
      curveId: p384 ? TPM_ECC.NIST_P384 : TPM_ECC.NIST_P256,
      kdf: NULL_SCHEME,
    },
    unique: { x: new Uint8Array(fill), y: new Uint8Array(fill) },
  };
}

/**
 * The EK profiles ironroot supports, in the order they are tried. Persistent handles: 0x81010001
 * for the RSA EK (TCG Provisioning Guidance); swtpm_setup also persists the P-384 EK at 0x81010016.
 */
export const EK_PROFILES: readonly EkProfile[] = [
  {
    kind: 'rsa2048',
    certIndex: 0x01c00002,
    persistentHandle: 0x81010001,
    highRange: false,
    template: rsaTemplate(false),
  },
  {
    kind: 'ecc-p256',
    certIndex: 0x01c0000a,
    persistentHandle: 0x81010002,
    highRange: false,
    template: eccTemplate('p256', false),
  },
  {
    kind: 'rsa2048-high',
    certIndex: 0x01c00012,
    persistentHandle: 0,
    highRange: true,
    template: rsaTemplate(true),
  },
  {
    kind: 'ecc-p256-high',
    certIndex: 0x01c00014,
    persistentHandle: 0,
    highRange: true,
    template: eccTemplate('p256', true),
  },
  {
    kind: 'ecc-p384-high',
    certIndex: 0x01c00016,
    persistentHandle: 0x81010016,
    highRange: true,
    template: eccTemplate('p384', true),
  },
];

export function ekProfile(kind: EkKind): EkProfile {
  const profile = EK_PROFILES.find((p) => p.kind === kind);
  if (!profile) throw new RangeError(`unknown EK kind "${kind}"`);
  return profile;
}
