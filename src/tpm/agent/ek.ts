/**
 * Endorsement keys on the agent: their certificates in NV, the keys themselves (persistent or
 * re-created from the template), and the policy sessions that authorize their use.
 *
 * @module
 */
import { TPM_HT, TPM_RH, TPM_SE, TPMA_NV } from '../codec/constants.js';
import { marshalPublic, type ParsedPublic, type TpmtPublic } from '../codec/public.js';
import { TpmError, TpmResponseError } from '../errors.js';
import { type AuthSession, passwordSession, policySession } from '../session.js';
import type { Tpm } from '../tpm.js';
import { EK_PROFILES, type EkKind, type EkProfile, ekProfile, highRangeBranches } from './ek-templates.js';

/** An EK certificate (or chain certificate) read from NV. */
export interface EkCertificate {
  readonly index: number;
  /**
   * The EK template this certificate is for; `other` for a standard EK index ironroot has no
   * template for (P-521, SM2, RSA-3072/4096); `intermediate` for chain indices 0x01c00100–0x01c001ff.
   */
  readonly kind: EkKind | 'other' | 'intermediate';
  /** The NV contents exactly as stored (what `tpm2_nvread` prints). */
  readonly raw: Uint8Array;
  /** The DER certificate: the PC Client `10 01 00 len` header and trailing padding removed. */
  readonly der: Uint8Array;
}

const CHAIN_FIRST = 0x01c00100;
const CHAIN_LAST = 0x01c001ff;

/** Every EK certificate index the profile defines, including high-range ones ironroot has no template for. */
const CERT_INDICES: ReadonlyMap<number, EkKind | 'other'> = new Map([
  ...EK_PROFILES.map((p): [number, EkKind] => [p.certIndex, p.kind]),
  ...[0x01c00018, 0x01c0001a, 0x01c0001c, 0x01c0001e].map((i): [number, 'other'] => [i, 'other']),
]);

/**
 * Reads all EK certificates present: the standard low- and high-range indices and the chain
 * indices. Only indices the TPM lists are read, so absent ones cost nothing.
 */
export async function readEkCertificates(tpm: Tpm): Promise<EkCertificate[]> {
  const present = await tpm.getHandles(TPM_HT.NV_INDEX);
  const out: EkCertificate[] = [];
  for (const index of present) {
    const isChain = index >= CHAIN_FIRST && index <= CHAIN_LAST;
    const kind = isChain ? 'intermediate' : CERT_INDICES.get(index);
    if (kind === undefined) continue;
    const { nvPublic } = await tpm.nvReadPublic(index);
    // Certificates are normally readable with the index's own (empty) auth, as tpm2-tools reads
    // them; some TPMs only allow owner reads (go-attestation #300), so use the owner then.
    const authHandle =
      nvPublic.attributes & TPMA_NV.AUTHREAD || !(nvPublic.attributes & TPMA_NV.OWNERREAD)
        ? index
        : TPM_RH.OWNER;
    const raw = await tpm.nvRead(index, nvPublic.dataSize, { authHandle });
    out.push({
      index,
      kind: kind === undefined || kind === 'other' ? 'intermediate' : kind,
      raw,
      der: unwrapCertificate(raw),
    });
  }
  return out;
}

/**
 * Strips what some TPMs put around the DER: a `10 01 00 <u16 length>` header (PC Client NV
 * certificate format) and padding after the certificate's outer SEQUENCE.
 */
export function unwrapCertificate(raw: Uint8Array): Uint8Array {
  let body = raw;
  if (body[0] === 0x10 && body[1] === 0x01 && body[2] === 0x00 && body.byteLength >= 5) {
    const length = ((body[3] ?? 0) << 8) | (body[4] ?? 0);
    body = body.subarray(5, 5 + length);
  }
  if (body[0] !== 0x30)
    throw new TpmError('ERR_TPM_MALFORMED', 'NV certificate does not start with a DER SEQUENCE');
  const lengthByte = body[1] ?? 0;
  let length: number;
  let header: number;
  if (lengthByte < 0x80) {
    length = lengthByte;
    header = 2;
  } else {
    const n = lengthByte & 0x7f;
    if (n === 0 || n > 3)
      throw new TpmError('ERR_TPM_MALFORMED', 'NV certificate has an unsupported DER length');
    length = 0;
    for (let i = 0; i < n; i++) length = length * 256 + (body[2 + i] ?? 0);
    header = 2 + n;
  }
  if (header + length > body.byteLength) {
    throw new TpmError('ERR_TPM_MALFORMED', 'NV certificate is shorter than its DER length says');
  }
  return Uint8Array.from(body.subarray(0, header + length));
}

/** A usable EK: persistent, or a transient primary this code created (and will flush). */
export interface Ek {
  readonly profile: EkProfile;
  readonly handle: number;
  readonly public: ParsedPublic;
  readonly name: Uint8Array;
  readonly transient: boolean;
}

function matchesTemplate(area: TpmtPublic, template: TpmtPublic): boolean {
  // unique is the last field of TPMT_PUBLIC; with it replaced by the template's, the encodings
  // are equal exactly when every other field is.
  const withTemplateUnique =
    area.type === template.type ? ({ ...area, unique: template.unique } as TpmtPublic) : area;
  return Buffer.from(marshalPublic(withTemplateUnique)).equals(marshalPublic(template));
}

export interface EkOptions {
  /** Endorsement hierarchy password (empty on almost every machine). */
  readonly endorsementAuth?: Uint8Array;
}

/**
 * The EK of `kind`: the persistent key when one sits at the profile's handle and matches the
 * template, else a primary created from the template. Release it with `releaseEk` (or use `withEk`).
 */
export async function loadEk(tpm: Tpm, kind: EkKind, options: EkOptions = {}): Promise<Ek> {
  const profile = ekProfile(kind);
  if (profile.persistentHandle !== 0) {
    try {
      const found = await tpm.readPublic(profile.persistentHandle);
      if (matchesTemplate(found.public.area, profile.template)) {
        return { profile, handle: found.handle, public: found.public, name: found.name, transient: false };
      }
    } catch (error) {
      // TPM_RC_HANDLE: nothing persisted there; any other failure is real.
      if (!(error instanceof TpmResponseError && error.rcName === 'TPM_RC_HANDLE')) throw error;
    }
  }
  const created = await tpm.createPrimary(
    TPM_RH.ENDORSEMENT,
    profile.template,
    passwordSession(options.endorsementAuth),
  );
  return { profile, handle: created.handle, public: created.public, name: created.name, transient: true };
}

/** Flushes the EK if `loadEk` created it. */
export async function releaseEk(tpm: Tpm, ek: Ek): Promise<void> {
  if (ek.transient) await tpm.flushContext(ek.handle);
}

export async function withEk<T>(
  tpm: Tpm,
  kind: EkKind,
  use: (ek: Ek) => Promise<T>,
  options: EkOptions = {},
): Promise<T> {
  const ek = await loadEk(tpm, kind, options);
  try {
    return await use(ek);
  } finally {
    await releaseEk(tpm, ek);
  }
}

/**
 * Runs `use` with a policy session that satisfies the EK's policy, and flushes the session after.
 * Low range: PolicySecret(endorsement). High range: PolicySecret(endorsement), then
 * PolicyOR(PolicyA, PolicyC), whose result is the template's PolicyB. A session is good for one
 * authorization, so each EK use needs its own.
 */
export async function withEkSession<T>(
  tpm: Tpm,
  ek: Ek,
  use: (auth: AuthSession) => Promise<T>,
  options: EkOptions = {},
): Promise<T> {
  const nameAlg = ek.public.area.nameAlg;
  const session = await tpm.startAuthSession(TPM_SE.POLICY, nameAlg);
  try {
    await tpm.policySecret(TPM_RH.ENDORSEMENT, passwordSession(options.endorsementAuth), session);
    if (ek.profile.highRange) await tpm.policyOr(session, highRangeBranches(nameAlg));
    return await use(policySession(session));
  } finally {
    await tpm.flushContext(session);
  }
}
