/**
 * The TPM verifier policy of this server's trust domain, loaded once at start-up from
 * `tpm_attestation`: which EKs are admitted (manufacturer CAs, an allow-list of EK hashes, or
 * explicitly any), which PCRs are quoted and which values they may have, and the nonce lifetime.
 *
 * @module
 */
import { X509Certificate } from 'node:crypto';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import {
  type FirmwareProfile,
  hashAlgByName,
  hashName,
  type PcrSelection,
  parseCertificateBundle,
  pcrSelection,
} from '../../tpm/index.js';
import type { ServerConfig } from '../config/schema.js';
import { ConfigUnsafeError } from '../errors.js';
import { type LoadedProfile, loadProfileDir } from '../profiles/load.js';

/** Which profiles a node must fit, decided by the first assignment whose match holds. */
export interface ProfileAssignment {
  readonly match: { readonly ekCa: string } | { readonly ekHash: string } | { readonly selector: string };
  readonly profiles: readonly string[];
}

export type MeasuredBootPolicy =
  /** Said explicitly in the config: the boot is not judged beyond replay and pcr_values. */
  | { readonly mode: 'none' }
  | {
      readonly mode: 'profiles';
      readonly dir: string;
      readonly profiles: ReadonlyMap<string, LoadedProfile>;
      readonly defaults: readonly string[];
      readonly rules: readonly ProfileAssignment[];
    };

export interface TpmPolicy {
  /** Roots and intermediates from `ek_ca_dir`; the self-signed ones are the anchors. */
  readonly roots: readonly X509Certificate[];
  readonly intermediates: readonly X509Certificate[];
  /** Lowercase hex EK public key hashes from `ek_hashes` and `ek_hash_allow_file`. */
  readonly allowedEkHashes: ReadonlySet<string>;
  readonly anyEk: boolean;
  readonly selection: readonly PcrSelection[];
  /** PCR number → accepted lowercase hex values, for the first bank of the selection. */
  readonly pcrValues: ReadonlyMap<number, readonly string[]>;
  readonly requireEventLog: boolean;
  readonly nonceTtl: number;
  readonly measuredBoot: MeasuredBootPolicy;
}

type TpmConfig = NonNullable<ServerConfig['tpm_attestation']>;

/** `sha256:0-7+sha1:0,1` → PCR selections. The schema has checked the syntax. */
export function parsePcrSelection(text: string): PcrSelection[] {
  return text.split('+').map((bank) => {
    const [name = '', list = ''] = bank.split(':');
    const pcrs = new Set<number>();
    for (const part of list.split(',')) {
      const [from, to] = part.split('-').map(Number);
      if (from === undefined) continue;
      for (let p = from; p <= (to ?? from); p++) {
        if (p > 23) throw new ConfigUnsafeError(`tpm_attestation.pcrs: PCR ${p} does not exist (0..23)`);
        pcrs.add(p);
      }
    }
    return pcrSelection(
      hashAlgByName(name),
      [...pcrs].sort((a, b) => a - b),
    );
  });
}

function readCertificates(file: string): X509Certificate[] {
  const bytes = readFileSync(file);
  const text = bytes.toString('latin1');
  return text.includes('-----BEGIN CERTIFICATE-----')
    ? parseCertificateBundle(text, file)
    : [new X509Certificate(bytes)];
}

function loadCaDir(dir: string): { roots: X509Certificate[]; intermediates: X509Certificate[] } {
  let names: string[];
  try {
    names = readdirSync(dir).sort();
  } catch (cause) {
    throw new ConfigUnsafeError(
      `tpm_attestation.ek_ca_dir ${dir} cannot be read (${(cause as Error).message}); point it at a directory of PEM/DER EK CA certificates`,
    );
  }
  const certs = names
    .map((name) => join(dir, name))
    .filter((path) => statSync(path).isFile())
    .flatMap((path) => {
      try {
        return readCertificates(path);
      } catch (cause) {
        throw new ConfigUnsafeError(
          `tpm_attestation.ek_ca_dir: ${path} is not a PEM or DER certificate (${(cause as Error).message})`,
        );
      }
    });
  if (certs.length === 0)
    throw new ConfigUnsafeError(
      `tpm_attestation.ek_ca_dir ${dir} holds no certificates; add your TPM vendors' EK root and intermediate CAs`,
    );
  // Self-signed certificates anchor the chain; the rest may be used to reach them.
  const roots = certs.filter((c) => c.checkIssued(c) && c.verify(c.publicKey));
  return { roots, intermediates: certs.filter((c) => !roots.includes(c)) };
}

function readHashFile(file: string): string[] {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (cause) {
    throw new ConfigUnsafeError(
      `tpm_attestation.ek_hash_allow_file ${file} cannot be read: ${(cause as Error).message}`,
    );
  }
  return text
    .split('\n')
    .map((line) => line.replace(/#.*/, '').trim().toLowerCase())
    .filter((line) => line !== '')
    .map((line, index) => {
      if (!/^[0-9a-f]{64}$/.test(line))
        throw new ConfigUnsafeError(
          `tpm_attestation.ek_hash_allow_file ${file}: entry ${index + 1} ${JSON.stringify(line)} is not a hex SHA-256; one EK hash per line`,
        );
      return line;
    });
}

export function loadTpmPolicy(config: TpmConfig): TpmPolicy {
  const ca = config.ek_ca_dir === undefined ? { roots: [], intermediates: [] } : loadCaDir(config.ek_ca_dir);
  const hashes = new Set([
    ...config.ek_hashes,
    ...(config.ek_hash_allow_file === undefined ? [] : readHashFile(config.ek_hash_allow_file)),
  ]);
  const measuredBoot = loadMeasuredBoot(config.measured_boot);
  const selection = withProfilePcrs(parsePcrSelection(config.pcrs), measuredBoot);
  const firstBank = selection[0]?.pcrs ?? [];
  const pcrValues = new Map<number, string[]>();
  for (const [pcr, values] of Object.entries(config.pcr_values)) {
    const n = Number(pcr);
    if (!firstBank.includes(n))
      throw new ConfigUnsafeError(
        `tpm_attestation.pcr_values.${pcr}: PCR ${pcr} is not quoted (pcrs: ${config.pcrs}); add it to pcrs or remove the value`,
      );
    pcrValues.set(n, values);
  }
  return {
    roots: ca.roots,
    intermediates: ca.intermediates,
    allowedEkHashes: hashes,
    anyEk: config.ek_trust === 'any',
    selection,
    pcrValues,
    requireEventLog: config.require_event_log || measuredBoot.mode === 'profiles',
    nonceTtl: config.nonce_ttl,
    measuredBoot,
  };
}

function loadMeasuredBoot(config: TpmConfig['measured_boot']): MeasuredBootPolicy {
  if (config === 'none') return { mode: 'none' };
  let profiles: Map<string, LoadedProfile>;
  try {
    profiles = loadProfileDir(config.profiles_dir);
  } catch (cause) {
    throw new ConfigUnsafeError(`tpm_attestation.measured_boot.profiles_dir: ${(cause as Error).message}`);
  }
  const known = (names: readonly string[], key: string): readonly string[] => {
    for (const name of names)
      if (!profiles.has(name))
        throw new ConfigUnsafeError(
          `${key}: unknown firmware profile ${JSON.stringify(name)}; ${config.profiles_dir} holds ${
            profiles.size === 0 ? 'no profiles' : [...profiles.keys()].join(', ')
          }`,
        );
    return names;
  };
  return {
    mode: 'profiles',
    dir: config.profiles_dir,
    profiles,
    defaults: known(config.profiles, 'tpm_attestation.measured_boot.profiles'),
    rules: config.rules.map((rule, i) => ({
      match:
        rule.ek_ca !== undefined
          ? { ekCa: rule.ek_ca }
          : rule.ek_hash !== undefined
            ? { ekHash: rule.ek_hash }
            : { selector: rule.selector ?? '' },
      profiles: known(rule.profiles, `tpm_attestation.measured_boot.rules[${i}].profiles`),
    })),
  };
}

/** The verifier quotes at least every PCR a profile in use needs, in that profile's bank. */
function withProfilePcrs(selection: PcrSelection[], policy: MeasuredBootPolicy): PcrSelection[] {
  if (policy.mode === 'none') return selection;
  const banks = new Map(selection.map((s) => [hashName(s.hash) as string, new Set(s.pcrs)]));
  for (const { profile } of policy.profiles.values()) {
    const pcrs = banks.get(profile.bank) ?? new Set<number>();
    for (const pcr of profile.pcrs) pcrs.add(pcr);
    banks.set(profile.bank, pcrs);
  }
  return [...banks].map(([bank, pcrs]) => pcrSelection(hashAlgByName(bank), [...pcrs]));
}

/** What a profile assignment may match on: the EK's identity, never anything the agent says of itself. */
export interface BootSubject {
  readonly ekHash: string;
  readonly ekIssuer: string | undefined;
  /** `tpm:…` selectors derived from the EK certificate (manufacturer, model). */
  readonly selectors: readonly string[];
}

/** The profiles `subject` must fit (any one of them). */
export function profilesFor(
  policy: Extract<MeasuredBootPolicy, { mode: 'profiles' }>,
  subject: BootSubject,
): FirmwareProfile[] {
  const rule = policy.rules.find(({ match }) =>
    'ekCa' in match
      ? match.ekCa === subject.ekIssuer
      : 'ekHash' in match
        ? match.ekHash === subject.ekHash
        : subject.selectors.includes(match.selector),
  );
  return (rule?.profiles ?? policy.defaults).flatMap((name) => {
    const loaded = policy.profiles.get(name);
    return loaded === undefined ? [] : [loaded.profile];
  });
}
