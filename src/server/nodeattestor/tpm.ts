/**
 * The server's half of the TPM handshake (ARCHITECTURE.md, steps 3 and 5), built from the verifier
 * library in src/tpm: admit the EK, admit the AK, issue the challenge, judge the answer. Every
 * refusal is an AttestationError with its own code; library errors are mapped to those codes here.
 *
 * @module
 */
import { createHash, randomBytes } from 'node:crypto';
import {
  type BootFacts,
  bootFacts,
  type CredentialChallenge,
  checkAkPublic,
  compareWithPcrs,
  type EventLog,
  EventLogError,
  ekPublicKeyHash,
  evaluateProfile,
  hashName,
  MAX_PRESENTED_CERTIFICATES,
  makeCredential,
  objectName,
  type ParsedPublic,
  parseAttest,
  parseEventLog,
  parseTpm2bPublic,
  TPM_ALG,
  TPM_ECC,
  type TpmDeviceInfo,
  TpmError,
  type TpmtPublic,
  type VerifiedQuote,
  type Violation,
  verifyQuote,
} from '../../tpm/index.js';
import type { Selector } from '../datastore/datastore.js';
import { type EkJob, type EkJudgement, wrapTpm } from './ek-judge.js';
import { AttestationError, type AttestationErrorCode } from './errors.js';
import type { NonceStore } from './nonces.js';
import { type BootSubject, profilesFor, type TpmPolicy } from './policy.js';

export interface TpmEvidence {
  readonly ekCertificates: readonly Uint8Array[];
  readonly ekPublic: Uint8Array;
  readonly akPublic: Uint8Array;
}

export interface AdmittedEk {
  readonly ekPublic: ParsedPublic;
  readonly ekHash: string;
  /** Issuer of the EK certificate, when one was sent. */
  readonly issuer: string | undefined;
  readonly device: TpmDeviceInfo | undefined;
}

function decodePublic(bytes: Uint8Array, what: string): ParsedPublic {
  try {
    return parseTpm2bPublic(bytes);
  } catch (cause) {
    throw new AttestationError(
      'ERR_ATTEST_BAD_REQUEST',
      `the ${what} is not a TPM2B_PUBLIC (${(cause as Error).message}); send it as the TPM returned it`,
      { cause },
    );
  }
}

/**
 * Largest certificate read from the agent, in bytes. EK certificates and the intermediates beside
 * them live in NV indices, which TPMs limit to 2 to 4 KiB.
 */
export const MAX_EK_CERTIFICATE_BYTES = 8192;

/** The EK certificate and the CA certificates the agent may send with it. */
const MAX_EK_CERTIFICATES = 1 + MAX_PRESENTED_CERTIFICATES;

/** Refuses certificate material beyond what any TPM holds, before a byte of it is parsed. */
function refuseOversized(certificates: readonly Uint8Array[]): void {
  if (certificates.length > MAX_EK_CERTIFICATES)
    throw new AttestationError(
      'ERR_ATTEST_EVIDENCE_TOO_LARGE',
      `the agent sent ${certificates.length} EK certificates; at most ${MAX_EK_CERTIFICATES} are read (the EK certificate and ` +
        `${MAX_PRESENTED_CERTIFICATES} CA certificates from NV); put the manufacturer's intermediates in tpm_attestation.ek_ca_dir instead`,
    );
  const index = certificates.findIndex((c) => c.length > MAX_EK_CERTIFICATE_BYTES);
  if (index >= 0)
    throw new AttestationError(
      'ERR_ATTEST_EVIDENCE_TOO_LARGE',
      `EK certificate ${index + 1} of ${certificates.length} is ${certificates[index]?.length} bytes; at most ${MAX_EK_CERTIFICATE_BYTES} are read, ` +
        'which is more than any TPM NV index holds: send the certificates as read from NV',
    );
}

/**
 * Admits the EK: its certificate (when sent) must certify this EK public area, and then either its
 * hash is allow-listed, or its certificate chains to a configured EK CA, or the policy says any EK.
 * The size caps and the EK public area are checked here; `judge` (the EK worker pool) parses the
 * certificates and verifies the chain, off the thread that serves other callers.
 */
export async function admitEk(
  evidence: TpmEvidence,
  policy: TpmPolicy,
  at: Date,
  judge: (job: EkJob) => Promise<EkJudgement>,
): Promise<AdmittedEk> {
  refuseOversized(evidence.ekCertificates);
  const ekPublic = decodePublic(evidence.ekPublic, 'EK public area');
  const ekHash = ekPublicKeyHash(ekPublic.area);
  const allowListed = policy.allowedEkHashes.has(ekHash);
  const chain = !allowListed && policy.roots.length > 0;
  if (chain && evidence.ekCertificates.length === 0)
    throw new AttestationError(
      'ERR_ATTEST_EK_UNTRUSTED',
      `the agent sent no EK certificate and EK ${ekHash} is not allow-listed; the server trusts EKs by certificate: check the TPM has one in NV`,
    );
  const judged =
    evidence.ekCertificates.length === 0
      ? undefined
      : await judge({
          ekPublic: evidence.ekPublic,
          certificates: evidence.ekCertificates,
          chain,
          at: at.getTime(),
        });
  const admitted = { ekPublic, ekHash, issuer: judged?.issuer, device: judged?.device };
  // A judged chain reached a configured root: the worker refuses any other.
  if (allowListed || chain || policy.anyEk) return admitted;
  throw new AttestationError(
    'ERR_ATTEST_EK_NOT_ALLOWED',
    `EK ${ekHash} is not on the EK hash allow-list; if this node is yours, add the hash to tpm_attestation.ek_hashes or ek_hash_allow_file`,
  );
}

/** Admits the AK: a restricted signing key fixed to its TPM. */
export function admitAk(akPublicBytes: Uint8Array): ParsedPublic {
  const ak = decodePublic(akPublicBytes, 'AK public area');
  try {
    checkAkPublic(ak.area);
  } catch (error) {
    wrapTpm(error, { ERR_TPM_AK_ATTRIBUTES: 'ERR_ATTEST_AK_ATTRIBUTES' });
  }
  return ak;
}

export interface IssuedChallenge {
  readonly credential: CredentialChallenge | undefined;
  readonly nonce: Uint8Array;
}

/**
 * MakeCredential(EK, AK name, fresh secret) for attestation; renewal passes no EK and gets only a
 * nonce. The secret leaves here only inside the credential blob: the store keeps its hash.
 */
export async function issueChallenge(
  nonces: NonceStore,
  ek: ParsedPublic | undefined,
  ak: ParsedPublic,
): Promise<IssuedChallenge> {
  if (ek === undefined) return { credential: undefined, nonce: await nonces.issue() };
  const secret = randomBytes(32);
  let credential: CredentialChallenge;
  try {
    credential = makeCredential(ek.area, objectName(ak), secret);
  } catch (error) {
    wrapTpm(error, { ERR_TPM_UNSUPPORTED: 'ERR_ATTEST_BAD_REQUEST' });
  }
  return { credential, nonce: await nonces.issue(secret) };
}

export interface TpmAnswer {
  readonly activatedSecret: Uint8Array;
  readonly quote: Uint8Array;
  readonly signature: Uint8Array;
  readonly pcrValues: readonly Uint8Array[];
  readonly eventLog: Uint8Array;
}

export interface VerifiedAnswer {
  readonly quote: VerifiedQuote;
  /** From bound PCR 7 data only; `unknown` without a log, without PCR 7 quoted, or when nothing binds. */
  readonly secureBoot: 'enabled' | 'disabled' | 'unknown';
  /** Names of the firmware profiles the boot fits (empty under `measured_boot: none`). */
  readonly profiles: readonly string[];
}

/** A boot that fits none of the profiles assigned to it: every violated rule, per profile. */
export class ProfileViolationError extends AttestationError {
  constructor(readonly violations: ReadonlyMap<string, readonly Violation[]>) {
    super('ERR_ATTEST_PROFILE_VIOLATION', profileViolationMessage(violations));
  }
}

function profileViolationMessage(violations: ReadonlyMap<string, readonly Violation[]>): string {
  const parts = [...violations].map(
    ([name, list]) => `profile ${name}: ${list.map((v) => formatViolation(v)).join('; ')}`,
  );
  return `the boot fits none of its firmware profiles (${parts.join(' | ')}); if this boot is legitimate, learn a profile from it (ironroot-server profile learn) and assign it`;
}

/** One violation as a line: rule, PCR, event, expected, got. */
export function formatViolation(v: Violation): string {
  const where = [
    v.pcr === undefined ? '' : `PCR ${v.pcr}`,
    v.eventIndex === undefined ? '' : `event ${v.eventIndex}`,
  ]
    .filter((x) => x !== '')
    .join(' ');
  return `${v.rule}${where === '' ? '' : ` (${where})`}: expected ${v.expected}, got ${v.got}`;
}

const QUOTE_CODES: Partial<Record<string, AttestationErrorCode>> = {
  ERR_TPM_QUOTE_SIGNATURE: 'ERR_ATTEST_QUOTE_SIGNATURE',
  ERR_TPM_QUOTE_MAGIC: 'ERR_ATTEST_QUOTE_INVALID',
  ERR_TPM_QUOTE_TYPE: 'ERR_ATTEST_QUOTE_INVALID',
  ERR_TPM_QUOTE_NONCE: 'ERR_ATTEST_QUOTE_INVALID',
  ERR_TPM_QUOTE_PCR_SELECTION: 'ERR_ATTEST_QUOTE_INVALID',
  ERR_TPM_QUOTE_PCR_DIGEST: 'ERR_ATTEST_PCR_DIGEST',
  ERR_TPM_UNSUPPORTED: 'ERR_ATTEST_QUOTE_INVALID',
};

/**
 * Judges the agent's answer in the architecture's order: nonce fresh and unused, secret recovered
 * (so the AK lives in the EK's TPM), quote signed by the AK over our nonce and selection, PCR digest
 * equal to the reported values, event log replaying to them, and the PCR policy.
 */
export async function verifyAnswer(input: {
  readonly answer: TpmAnswer;
  readonly challenge: IssuedChallenge;
  readonly ak: ParsedPublic;
  readonly policy: TpmPolicy;
  readonly nonces: NonceStore;
  /** Whose boot this is, for choosing its firmware profiles. */
  readonly subject: BootSubject;
}): Promise<VerifiedAnswer> {
  const { answer, challenge, policy } = input;
  await input.nonces.consume(challenge.nonce, answer.activatedSecret);
  let quote: VerifiedQuote;
  try {
    quote = verifyQuote({
      akPublic: input.ak.area,
      attest: answer.quote,
      signature: answer.signature,
      nonce: challenge.nonce,
      pcrSelection: policy.selection,
      pcrValues: answer.pcrValues,
    });
  } catch (error) {
    if (
      error instanceof TpmError &&
      error.code === 'ERR_TPM_QUOTE_NONCE' &&
      (await quotedNonceWasUsed(answer, input.nonces))
    )
      throw new AttestationError(
        'ERR_ATTEST_NONCE_REPLAYED',
        'the quote is qualified by a nonce from an earlier handshake: a replayed quote; quote with the nonce of this challenge',
        { cause: error },
      );
    wrapTpm(error, QUOTE_CODES);
  }

  const quoted = quotedBanks(quote);
  let log: EventLog | undefined;
  if (answer.eventLog.length === 0) {
    if (policy.requireEventLog)
      throw new AttestationError(
        'ERR_ATTEST_EVENTLOG_REQUIRED',
        'policy requires the measured-boot event log and the agent sent none; check securityfs is mounted on the node',
      );
  } else {
    log = replayedLog(answer.eventLog, quoted, policy);
  }
  const judged = judgeBoot(log, quoted, policy, input.subject);

  const firstBank = policy.selection[0]?.hash;
  for (const [pcr, allowed] of policy.pcrValues) {
    const quoted = quote.pcrs.find((p) => p.hash === firstBank && p.pcr === pcr);
    const hex = quoted === undefined ? 'missing' : Buffer.from(quoted.value).toString('hex');
    if (!allowed.includes(hex))
      throw new AttestationError(
        'ERR_ATTEST_PCR_POLICY',
        `PCR ${pcr} is ${hex}, which tpm_attestation.pcr_values does not accept; if this boot is legitimate, add the value`,
      );
  }
  return { quote, ...judged };
}

/** The quoted PCR values: bank name → PCR → value. */
function quotedBanks(quote: VerifiedQuote): Map<string, Map<number, Buffer>> {
  const banks = new Map<string, Map<number, Buffer>>();
  for (const pcr of quote.pcrs) {
    const bank = banks.get(hashName(pcr.hash)) ?? new Map<number, Buffer>();
    bank.set(pcr.pcr, Buffer.from(pcr.value));
    banks.set(hashName(pcr.hash), bank);
  }
  return banks;
}

/** The log, once it replays to every quoted PCR (and extends those pcr_values relies on). */
function replayedLog(
  bytes: Uint8Array,
  quoted: Map<string, Map<number, Buffer>>,
  policy: TpmPolicy,
): EventLog {
  try {
    const log = parseEventLog(Buffer.from(bytes));
    compareWithPcrs(log, quoted, { required: [...policy.pcrValues.keys()] });
    return log;
  } catch (error) {
    if (error instanceof EventLogError)
      throw new AttestationError('ERR_ATTEST_EVENTLOG_REPLAY', `event log refused: ${error.message}`, {
        cause: error,
      });
    throw error;
  }
}

/**
 * Secure Boot from bound data in the first quoted bank, and the firmware profiles the boot fits.
 * Refuses with every violated rule when the boot fits none of the profiles assigned to it.
 */
function judgeBoot(
  log: EventLog | undefined,
  quoted: Map<string, Map<number, Buffer>>,
  policy: TpmPolicy,
  subject: BootSubject,
): Omit<VerifiedAnswer, 'quote'> {
  const firstBank = policy.selection[0] === undefined ? undefined : hashName(policy.selection[0].hash);
  if (log === undefined || firstBank === undefined || !log.banks.includes(firstBank))
    return { secureBoot: 'unknown', profiles: [] };
  // Binding hashes every event's data: once per bank, whatever the number of profiles.
  const byBank = new Map<string, BootFacts>();
  const factsIn = (bank: string): BootFacts => {
    let facts = byBank.get(bank);
    if (facts === undefined) {
      facts = bootFacts(log, { bank, pcrs: [...(quoted.get(bank)?.keys() ?? [])] });
      byBank.set(bank, facts);
    }
    return facts;
  };
  const { secureBoot } = factsIn(firstBank);
  if (policy.measuredBoot.mode === 'none') return { secureBoot, profiles: [] };
  const violations = new Map<string, Violation[]>();
  const fits: string[] = [];
  for (const profile of profilesFor(policy.measuredBoot, subject)) {
    const found = log.banks.includes(profile.bank)
      ? evaluateProfile(profile, {
          facts: factsIn(profile.bank),
          pcrValues: hexValues(quoted.get(profile.bank)),
        })
      : [
          {
            rule: 'pcrs' as const,
            expected: `an event log with the ${profile.bank} bank`,
            got: log.banks.join(', '),
          },
        ];
    if (found.length === 0) fits.push(profile.name);
    else violations.set(profile.name, found);
  }
  if (fits.length === 0) throw new ProfileViolationError(violations);
  return { secureBoot, profiles: fits };
}

function hexValues(values: ReadonlyMap<number, Buffer> | undefined): Map<number, string> {
  return new Map([...(values ?? [])].map(([pcr, v]) => [pcr, v.toString('hex')]));
}

async function quotedNonceWasUsed(answer: TpmAnswer, nonces: NonceStore): Promise<boolean> {
  let extraData: Uint8Array;
  try {
    extraData = parseAttest(answer.quote).extraData;
  } catch {
    return false;
  }
  return nonces.wasConsumed(extraData);
}

/** What the node record keeps of the last verified quote. */
export interface LastQuote {
  quoted_at: number;
  reset_count: number;
  restart_count: number;
  firmware_version: string;
  pcrs: Record<string, Record<string, string>>;
}

export function lastQuote(quote: VerifiedQuote, at: number): LastQuote {
  const pcrs: Record<string, Record<string, string>> = {};
  for (const p of quote.pcrs) {
    const bank = hashName(p.hash);
    pcrs[bank] = { ...pcrs[bank], [String(p.pcr)]: Buffer.from(p.value).toString('hex') };
  }
  return {
    quoted_at: at,
    reset_count: quote.clockInfo.resetCount,
    restart_count: quote.clockInfo.restartCount,
    firmware_version: quote.firmwareVersion.toString(16).padStart(16, '0'),
    pcrs,
  };
}

/**
 * What `agent show` tells of a recorded AK: SHA-256 of its TPM2B_PUBLIC, and its key type named as
 * the agent's `--ak` option names it (rsa2048, ecc-p256; other curves by their TPM_ECC name).
 */
export function akSummary(akPublic: Uint8Array): { sha256: string; algorithm: string } {
  const sha256 = createHash('sha256').update(akPublic).digest('hex');
  let area: TpmtPublic;
  try {
    ({ area } = parseTpm2bPublic(akPublic));
  } catch (error) {
    // A damaged record must not make `agent show` and `agent list` fail for every node.
    if (error instanceof TpmError) return { sha256, algorithm: 'unreadable' };
    throw error;
  }
  const curve = (id: number) =>
    Object.entries(TPM_ECC)
      .find(([, value]) => value === id)?.[0]
      .toLowerCase()
      .replace('nist_', '') ?? `0x${id.toString(16).padStart(4, '0')}`;
  return {
    sha256,
    algorithm:
      area.type === TPM_ALG.RSA ? `rsa${area.parameters.keyBits}` : `ecc-${curve(area.parameters.curveId)}`,
  };
}

/** What profile assignments may match on, from the admitted EK alone. */
export function bootSubject(ek: AdmittedEk): BootSubject {
  return {
    ekHash: ek.ekHash,
    ekIssuer: ek.issuer,
    selectors: ek.device
      ? [`tpm:manufacturer:${ek.device.manufacturer}`, `tpm:model:${ek.device.model}`]
      : [],
  };
}

/** The node's selectors: what node-alias entries match on. */
export function tpmSelectors(ek: AdmittedEk, verified: VerifiedAnswer): Selector[] {
  const s = (value: string): Selector => ({ type: 'tpm', value });
  return [
    s(`ek-hash:${ek.ekHash}`),
    ...(ek.device ? [s(`manufacturer:${ek.device.manufacturer}`), s(`model:${ek.device.model}`)] : []),
    s(`firmware-version:${verified.quote.firmwareVersion.toString(16).padStart(16, '0')}`),
    ...verified.quote.pcrs.map((p) =>
      s(`pcr:${hashName(p.hash)}:${p.pcr}:${Buffer.from(p.value).toString('hex')}`),
    ),
    ...(verified.secureBoot === 'unknown' ? [] : [s(`secureboot:${verified.secureBoot}`)]),
    ...verified.profiles.map((name) => s(`profile:${name}`)),
  ];
}
