import { EV } from '../eventlog/constants.js';
import { EventLogError } from '../eventlog/errors.js';
import type { BootEvent, BootFacts } from '../eventlog/facts.js';
import { parseSignatureLists, type SignatureEntryId } from '../eventlog/signature-list.js';
import {
  type FirmwareProfile,
  type ProfileRule,
  RULE_PCRS,
  type TextRule,
  type Violation,
} from './profile.js';

export interface ProfileInput {
  /** Facts bound in the profile's bank over the quoted PCRs. */
  facts: BootFacts;
  /** Quoted values of the profile's bank, lowercase hex, by PCR. */
  pcrValues: ReadonlyMap<number, string>;
}

/**
 * Every rule of `profile` the boot violates, in PCR and log order; empty when the boot fits. Every
 * event in a PCR the profile names must be accounted for by a rule: an event nothing allows is a
 * violation, so a profile allows what it lists and nothing else.
 */
export function evaluateProfile(profile: FirmwareProfile, input: ProfileInput): Violation[] {
  const { facts } = input;
  const out: Violation[] = [];
  if (facts.bank !== profile.bank)
    return [{ rule: 'pcrs', expected: `facts in the ${profile.bank} bank`, got: `the ${facts.bank} bank` }];
  const covered = new Set(facts.pcrs);
  for (const pcr of [...profile.pcrs].sort((a, b) => a - b)) {
    if (!covered.has(pcr)) {
      out.push({ rule: 'pcrs', pcr, expected: `PCR ${pcr} quoted and replayed`, got: 'not quoted' });
      continue;
    }
    const events = facts.events.filter((e) => e.pcr === pcr);
    const pinned = profile.pcrValues?.get(pcr);
    if (events.length === 0 && pinned === undefined)
      out.push({
        rule: 'pcrs',
        pcr,
        expected: `events in the log for PCR ${pcr}, or its value in pcr_values`,
        got: 'no events',
      });
    for (const event of events) {
      const v = checkEvent(profile, event);
      if (v !== undefined) out.push(v);
    }
    if (pcr === RULE_PCRS.secureBoot && profile.secureBoot !== undefined)
      out.push(...checkSecureBoot(profile, facts));
    if (pinned !== undefined) {
      const got = input.pcrValues.get(pcr) ?? 'missing';
      if (!pinned.includes(got))
        out.push({ rule: 'pcr_values', pcr, expected: listed(pinned, `pcr_values.${pcr}`), got });
    }
  }
  return out;
}

function listed(values: readonly string[], where: string): string {
  return values.length === 1 ? (values[0] ?? '') : `one of the ${values.length} values in ${where}`;
}

function violation(rule: ProfileRule, event: BootEvent, expected: string, got: string): Violation {
  return { rule, pcr: event.pcr, eventIndex: event.index, expected, got };
}

/** The rule that accounts for one event: undefined when it fits. */
function checkEvent(profile: FirmwareProfile, event: BootEvent): Violation | undefined {
  const m = event.meaning;
  if (m.kind === 'separator')
    return m.error
      ? violation('events.separator', event, 'separator 0', 'the firmware error separator')
      : undefined;
  if (m.kind === 'action') return undefined;
  const byRule = checkBySection(profile, event);
  if (byRule !== 'unhandled') return byRule;
  if (profile.otherEvents?.get(event.pcr)?.includes(event.digest)) return undefined;
  if (m.kind === 'unbound')
    return violation(
      'events.bound',
      event,
      `data that hashes to the digest, or digest ${event.digest} in other_events.${event.pcr}`,
      `${event.typeName} at offset ${event.offset}: ${m.reason}`,
    );
  return violation(
    'other_events',
    event,
    `a rule for it, or its digest in other_events.${event.pcr}`,
    `${event.typeName} ${event.digest}${describe(event)}`,
  );
}

function describe(event: BootEvent): string {
  const m = event.meaning;
  if (m.kind === 'content' && m.label !== undefined) return ` (${m.label})`;
  if (m.kind === 'variable') return ` (${m.variable.name})`;
  if (m.kind === 'crtm-version') return ` (${m.version})`;
  if (m.kind === 'grub-command') return ` (grub_cmd: ${m.command})`;
  if (m.kind === 'kernel-cmdline') return ` (kernel_cmdline: ${m.cmdline})`;
  return '';
}

function digestRule(
  rule: ProfileRule,
  allowed: readonly string[] | undefined,
  event: BootEvent,
): Violation | undefined | 'unhandled' {
  if (allowed === undefined) return 'unhandled';
  return allowed.includes(event.digest)
    ? undefined
    : violation(rule, event, listed(allowed, rule), `${event.digest}${describe(event)}`);
}

const SECURE_BOOT_VARIABLES = new Set(['SecureBoot', 'PK', 'KEK', 'db', 'dbx']);

function checkBySection(profile: FirmwareProfile, event: BootEvent): Violation | undefined | 'unhandled' {
  const m = event.meaning;
  switch (event.pcr) {
    case RULE_PCRS.firmware: {
      const fw = profile.firmware;
      if (m.kind === 'crtm-version' && fw?.crtmVersions !== undefined)
        return fw.crtmVersions.includes(m.version)
          ? undefined
          : violation(
              'firmware.crtm_versions',
              event,
              listed(fw.crtmVersions, 'firmware.crtm_versions'),
              m.version,
            );
      return m.kind === 'content' ? digestRule('firmware.blobs', fw?.blobs, event) : 'unhandled';
    }
    case RULE_PCRS.secureBoot: {
      const sb = profile.secureBoot;
      if (sb === undefined) return 'unhandled';
      if (event.type === EV.EFI_VARIABLE_AUTHORITY)
        return digestRule('secure_boot.authorities', sb.authorities, event);
      // SecureBoot, PK, KEK, db and dbx are judged as a whole by checkSecureBoot.
      return event.type === EV.EFI_VARIABLE_DRIVER_CONFIG &&
        m.kind === 'variable' &&
        SECURE_BOOT_VARIABLES.has(m.variable.name)
        ? undefined
        : 'unhandled';
    }
    case RULE_PCRS.bootApplications:
      return event.type === EV.EFI_BOOT_SERVICES_APPLICATION
        ? digestRule('boot.applications', profile.bootApplications, event)
        : 'unhandled';
    case RULE_PCRS.mok:
      return m.kind === 'content' ? digestRule('boot.mok', profile.mok, event) : 'unhandled';
    case RULE_PCRS.bootFiles:
      return m.kind === 'content' ? digestRule('boot.files', profile.bootFiles, event) : 'unhandled';
    case RULE_PCRS.kernelCmdline:
      if (m.kind === 'kernel-cmdline' && profile.kernelCmdline !== undefined)
        return textRule('boot.kernel_cmdline', profile.kernelCmdline, m.cmdline, event);
      if (m.kind === 'grub-command' && profile.grubCommands !== undefined)
        return textRule('boot.grub_commands', profile.grubCommands, m.command, event);
      return 'unhandled';
    default:
      return 'unhandled';
  }
}

const compiled = new Map<string, RegExp>();

/** Whether `text` satisfies the rule; patterns are anchored at both ends. */
export function matchesText(rule: TextRule, text: string): boolean {
  if ('exact' in rule) return rule.exact === text;
  let re = compiled.get(rule.pattern);
  if (re === undefined) {
    re = new RegExp(`^(?:${rule.pattern})$`, 'u');
    compiled.set(rule.pattern, re);
  }
  return re.test(text);
}

function textRule(
  rule: ProfileRule,
  rules: readonly TextRule[],
  text: string,
  event: BootEvent,
): Violation | undefined {
  if (rules.some((r) => matchesText(r, text))) return undefined;
  const expected = rules.map((r) => ('exact' in r ? JSON.stringify(r.exact) : `/${r.pattern}/`)).join(' or ');
  return violation(rule, event, expected, JSON.stringify(text));
}

function checkSecureBoot(profile: FirmwareProfile, facts: BootFacts): Violation[] {
  const sb = profile.secureBoot ?? {};
  const out: Violation[] = [];
  const pcr = RULE_PCRS.secureBoot;
  if (sb.enabled !== undefined) {
    const want = sb.enabled ? 'enabled' : 'disabled';
    if (facts.secureBoot !== want)
      out.push({
        rule: 'secure_boot.enabled',
        pcr,
        expected: want,
        got:
          facts.secureBoot === 'unknown'
            ? 'unknown (no bound SecureBoot measurement in PCR 7)'
            : facts.secureBoot,
      });
  }
  const lists: [ProfileRule, string, readonly string[] | undefined][] = [
    ['secure_boot.pk', 'PK', sb.pk],
    ['secure_boot.kek', 'KEK', sb.kek],
    ['secure_boot.db', 'db', sb.db],
  ];
  for (const [rule, name, allowed] of lists) {
    if (allowed === undefined) continue;
    const read = readVariable(facts, name, rule);
    if ('violation' in read) {
      out.push(read.violation);
      continue;
    }
    for (const id of read.entries)
      if (!allowed.includes(id))
        out.push({ rule, pcr, eventIndex: read.eventIndex, expected: listed(allowed, rule), got: id });
  }
  if (sb.dbxRequired !== undefined) {
    const read = readVariable(facts, 'dbx', 'secure_boot.dbx_required');
    if ('violation' in read) out.push(read.violation);
    else {
      const present = new Set(read.entries);
      for (const id of sb.dbxRequired)
        if (!present.has(id))
          out.push({
            rule: 'secure_boot.dbx_required',
            pcr,
            eventIndex: read.eventIndex,
            expected: id,
            got: `absent from dbx (${present.size} entries): the dbx is stale`,
          });
    }
  }
  return out;
}

type VariableRead = { entries: readonly SignatureEntryId[]; eventIndex: number } | { violation: Violation };

/**
 * Parsed PK/KEK/db/dbx values by bank and digest. A bound event's data hashes to its digest, so the
 * digest names the data exactly; re-quotes of the same boot skip re-parsing hundreds of dbx entries.
 */
const parsedLists = new Map<string, readonly SignatureEntryId[]>();
const PARSED_LISTS_CAP = 256;

function readVariable(facts: BootFacts, name: string, rule: ProfileRule): VariableRead {
  const pcr = RULE_PCRS.secureBoot;
  const events = facts.events.filter(
    (e) =>
      e.pcr === pcr &&
      e.type === EV.EFI_VARIABLE_DRIVER_CONFIG &&
      e.meaning.kind === 'variable' &&
      e.meaning.variable.name === name,
  );
  const [event] = events;
  if (event === undefined || event.meaning.kind !== 'variable')
    return { violation: { rule, pcr, expected: `a bound ${name} measurement in PCR 7`, got: 'none' } };
  if (events.length > 1)
    return {
      violation: {
        rule,
        pcr,
        expected: `one ${name} measurement`,
        got: `${events.length} (events ${events.map((e) => e.index).join(', ')})`,
      },
    };
  const key = `${facts.bank}:${event.digest}`;
  const cached = parsedLists.get(key);
  if (cached !== undefined) return { entries: cached, eventIndex: event.index };
  try {
    const entries = parseSignatureLists(event.meaning.variable.data, {
      eventIndex: event.index,
      offset: event.dataOffset,
    });
    if (parsedLists.size >= PARSED_LISTS_CAP) parsedLists.clear();
    parsedLists.set(key, entries);
    return { entries, eventIndex: event.index };
  } catch (e) {
    if (!(e instanceof EventLogError)) throw e;
    return {
      violation: {
        rule,
        pcr,
        eventIndex: event.index,
        expected: `${name} as EFI_SIGNATURE_LISTs`,
        got: e.message,
      },
    };
  }
}

/** The entries of a bound PK/KEK/db/dbx measurement, or undefined when there is none to read. */
export function secureBootEntries(facts: BootFacts, name: 'PK' | 'KEK' | 'db' | 'dbx'): string[] | undefined {
  const read = readVariable(facts, name, 'secure_boot.db');
  return 'entries' in read ? [...read.entries] : undefined;
}
