/**
 * Firmware profiles on disk: one YAML file per profile, `<name>.yaml`, validated against the schema
 * with every error naming the file, the key, the value and what is allowed.
 *
 * @module
 */
import { readdirSync, readFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { parseDocument, stringify } from 'yaml';
import type { FirmwareProfile, TextRule } from '../../tpm/index.js';
import { describeIssue } from '../config/load.js';
import { ServerError } from '../errors.js';
import { type ProfileDocument, profileSchema } from './schema.js';

export class ProfileError extends ServerError {
  constructor(message: string, cause?: unknown) {
    super('ERR_PROFILE_INVALID', message, { cause });
  }
}

export interface LoadedProfile {
  profile: FirmwareProfile;
  file: string;
}

const EXTENSION = /\.ya?ml$/;

/** Parse and validate one profile file. */
export function loadProfileFile(file: string): LoadedProfile {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (cause) {
    throw new ProfileError(`cannot read firmware profile ${file}: ${(cause as Error).message}`, cause);
  }
  const document = parseDocument(text, { uniqueKeys: true });
  if (document.errors.length > 0)
    throw new ProfileError(
      `firmware profile ${file} is not valid YAML: ${document.errors.map((e) => e.message.split('\n')[0]).join('; ')}`,
    );
  const raw: unknown = document.toJS();
  const result = profileSchema.safeParse(raw, { reportInput: true });
  if (!result.success)
    throw new ProfileError(
      `invalid firmware profile ${file}:\n  ${result.error.issues.map((i) => describeIssue(i, raw, profileSchema)).join('\n  ')}`,
    );
  const stem = basename(file).replace(EXTENSION, '');
  if (result.data.name !== stem)
    throw new ProfileError(
      `invalid firmware profile ${file}:\n  name: got ${JSON.stringify(result.data.name)}; allowed: the file name without .yaml (${JSON.stringify(stem)}), so a profile is found by its name`,
    );
  return { profile: fromDocument(result.data), file };
}

/** Every `*.yaml` in `dir`, by name. Any invalid file fails the whole load: a policy is all or nothing. */
export function loadProfileDir(dir: string): Map<string, LoadedProfile> {
  let names: string[];
  try {
    names = readdirSync(dir)
      .filter((n) => EXTENSION.test(n))
      .sort();
  } catch (cause) {
    throw new ProfileError(
      `cannot read the firmware profile directory ${dir}: ${(cause as Error).message}`,
      cause,
    );
  }
  const profiles = new Map<string, LoadedProfile>();
  for (const name of names) {
    const loaded = loadProfileFile(join(dir, name));
    const twin = profiles.get(loaded.profile.name);
    if (twin !== undefined)
      throw new ProfileError(
        `firmware profiles ${twin.file} and ${loaded.file} are both named ${loaded.profile.name}`,
      );
    profiles.set(loaded.profile.name, loaded);
  }
  return profiles;
}

type Parsed = ReturnType<typeof profileSchema.parse>;

function perPcr(record: Record<string, string[]> | undefined): Map<number, string[]> | undefined {
  return record === undefined ? undefined : new Map(Object.entries(record).map(([k, v]) => [Number(k), v]));
}

function fromDocument(d: Parsed): FirmwareProfile {
  const p: FirmwareProfile = { name: d.name, bank: d.bank, pcrs: d.pcrs };
  if (d.description !== undefined) p.description = d.description;
  if (d.firmware !== undefined)
    p.firmware = definedOnly({ crtmVersions: d.firmware.crtm_versions, blobs: d.firmware.blobs });
  if (d.secure_boot !== undefined) {
    const sb = d.secure_boot;
    p.secureBoot = definedOnly({
      enabled: sb.enabled,
      pk: sb.pk,
      kek: sb.kek,
      db: sb.db,
      dbxRequired: sb.dbx_required,
      authorities: sb.authorities,
    });
  }
  const boot = d.boot ?? {};
  Object.assign(
    p,
    definedOnly({
      bootApplications: boot.applications,
      mok: boot.mok,
      kernelCmdline: boot.kernel_cmdline as TextRule[] | undefined,
      grubCommands: boot.grub_commands as TextRule[] | undefined,
      bootFiles: boot.files,
      otherEvents: perPcr(d.other_events),
      pcrValues: perPcr(d.pcr_values),
    }),
  );
  return p;
}

/** The YAML document for a profile, keys in the documented order. */
export function toDocument(p: FirmwareProfile): ProfileDocument {
  const record = (m: ReadonlyMap<number, readonly string[]> | undefined) =>
    m === undefined
      ? undefined
      : Object.fromEntries([...m].sort(([a], [b]) => a - b).map(([k, v]) => [String(k), [...v]]));
  const boot = definedOnly({
    applications: p.bootApplications,
    mok: p.mok,
    kernel_cmdline: p.kernelCmdline,
    grub_commands: p.grubCommands,
    files: p.bootFiles,
  });
  return definedOnly({
    name: p.name,
    description: p.description,
    bank: p.bank as ProfileDocument['bank'],
    pcrs: [...p.pcrs],
    firmware: p.firmware && definedOnly({ crtm_versions: p.firmware.crtmVersions, blobs: p.firmware.blobs }),
    secure_boot:
      p.secureBoot &&
      definedOnly({
        enabled: p.secureBoot.enabled,
        pk: p.secureBoot.pk,
        kek: p.secureBoot.kek,
        db: p.secureBoot.db,
        dbx_required: p.secureBoot.dbxRequired,
        authorities: p.secureBoot.authorities,
      }),
    boot: Object.keys(boot).length > 0 ? boot : undefined,
    other_events: record(p.otherEvents),
    pcr_values: record(p.pcrValues),
  }) as ProfileDocument;
}

export function profileYaml(p: FirmwareProfile, header: string): string {
  const comments = header
    .split('\n')
    .map((line) => `# ${line}`.trimEnd())
    .join('\n');
  return `${comments}\n${stringify(toDocument(p), { lineWidth: 0 })}`;
}

function definedOnly<T extends Record<string, unknown>>(o: T): { [K in keyof T]: Exclude<T[K], undefined> } {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as {
    [K in keyof T]: Exclude<T[K], undefined>;
  };
}
