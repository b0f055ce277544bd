import { EV } from '../eventlog/constants.js';
import type { BootEvent, BootFacts } from '../eventlog/facts.js';
import { evaluateProfile, secureBootEntries } from './evaluate.js';
import { type FirmwareProfile, RULE_PCRS } from './profile.js';

/**
 * PCRs a learnt profile covers by default: firmware (0), option ROMs and drivers (2), boot
 * applications (4), Secure Boot (7), grub (8, 9) and shim's MOK (14). PCRs 1 and 5 (boot variables,
 * GPT) and 3, 6 change with a machine's configuration and disks, so they pin a host, not a platform.
 */
export const DEFAULT_LEARN_PCRS: readonly number[] = [0, 2, 4, 7, 8, 9, 14];

export interface LearnOptions {
  name: string;
  description?: string;
  /** PCRs to cover; only those the log extends are kept. */
  pcrs?: readonly number[];
}

/**
 * A profile that the golden boot behind `facts` fits exactly: every measured firmware blob, boot
 * application, file, command and Secure Boot entry allowed, the dbx as it is required, and any event
 * the named rules do not cover allowed by its digest.
 */
export function learnProfile(facts: BootFacts, options: LearnOptions): FirmwareProfile {
  const extended = new Set(facts.events.map((e) => e.pcr));
  const pcrs = (options.pcrs ?? DEFAULT_LEARN_PCRS).filter((p) => extended.has(p)).sort((a, b) => a - b);
  const inPcr = (pcr: number): BootEvent[] =>
    pcrs.includes(pcr) ? facts.events.filter((e) => e.pcr === pcr) : [];
  const digests = (events: BootEvent[]): string[] => unique(events.map((e) => e.digest));
  const contents = (pcr: number): string[] => digests(inPcr(pcr).filter((e) => e.meaning.kind === 'content'));

  const profile: FirmwareProfile = { name: options.name, bank: facts.bank, pcrs };
  if (options.description !== undefined) profile.description = options.description;
  if (pcrs.includes(RULE_PCRS.firmware)) {
    profile.firmware = {
      crtmVersions: unique(
        inPcr(RULE_PCRS.firmware).flatMap((e) =>
          e.meaning.kind === 'crtm-version' ? [e.meaning.version] : [],
        ),
      ),
      blobs: contents(RULE_PCRS.firmware),
    };
  }
  if (pcrs.includes(RULE_PCRS.secureBoot)) {
    const sb: NonNullable<FirmwareProfile['secureBoot']> = {
      authorities: digests(inPcr(RULE_PCRS.secureBoot).filter((e) => e.type === EV.EFI_VARIABLE_AUTHORITY)),
    };
    if (facts.secureBoot !== 'unknown') sb.enabled = facts.secureBoot === 'enabled';
    const pk = secureBootEntries(facts, 'PK');
    const kek = secureBootEntries(facts, 'KEK');
    const db = secureBootEntries(facts, 'db');
    const dbx = secureBootEntries(facts, 'dbx');
    if (pk !== undefined) sb.pk = unique(pk);
    if (kek !== undefined) sb.kek = unique(kek);
    if (db !== undefined) sb.db = unique(db);
    if (dbx !== undefined) sb.dbxRequired = unique(dbx);
    profile.secureBoot = sb;
  }
  if (pcrs.includes(RULE_PCRS.bootApplications))
    profile.bootApplications = digests(
      inPcr(RULE_PCRS.bootApplications).filter((e) => e.type === EV.EFI_BOOT_SERVICES_APPLICATION),
    );
  if (pcrs.includes(RULE_PCRS.mok)) profile.mok = contents(RULE_PCRS.mok);
  if (pcrs.includes(RULE_PCRS.kernelCmdline)) {
    const events = inPcr(RULE_PCRS.kernelCmdline);
    profile.kernelCmdline = unique(
      events.flatMap((e) => (e.meaning.kind === 'kernel-cmdline' ? [e.meaning.cmdline] : [])),
    ).map((exact) => ({ exact }));
    profile.grubCommands = unique(
      events.flatMap((e) => (e.meaning.kind === 'grub-command' ? [e.meaning.command] : [])),
    ).map((exact) => ({ exact }));
  }
  if (pcrs.includes(RULE_PCRS.bootFiles)) profile.bootFiles = contents(RULE_PCRS.bootFiles);

  // Whatever the named rules leave unaccounted for is allowed by digest, so the golden boot fits.
  const leftover = evaluateProfile(profile, { facts, pcrValues: new Map() }).filter(
    (v) => v.rule === 'other_events' || v.rule === 'events.bound',
  );
  const other = new Map<number, string[]>();
  for (const v of leftover) {
    const event = facts.events.find((e) => e.index === v.eventIndex);
    if (event === undefined) continue;
    const list = other.get(event.pcr) ?? [];
    if (!list.includes(event.digest)) list.push(event.digest);
    other.set(event.pcr, list);
  }
  if (other.size > 0) profile.otherEvents = other;
  return profile;
}

function unique<T>(values: readonly T[]): T[] {
  return [...new Set(values)];
}
