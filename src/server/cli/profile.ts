/**
 * `profile learn|check|list|show`: firmware profiles. `learn` and `check` work offline on an event
 * log file, so a profile can be written and tried on a golden host before any server uses it;
 * `list` and `show` ask the running server which profiles it loaded.
 *
 * @module
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { Command } from 'commander';
import { reportCliError } from '../../host/index.js';
import {
  type BootFacts,
  DEFAULT_LEARN_PCRS,
  type EventLog,
  EventLogError,
  evaluateProfile,
  type FirmwareProfile,
  learnProfile,
  parseEventLog,
  replay,
  selfBootFacts,
  type Violation,
} from '../../tpm/index.js';
import type { ProfileMessage } from '../admin/messages.js';
import { formatViolation } from '../nodeattestor/tpm.js';
import { loadProfileFile, profileYaml } from '../profiles/load.js';
import {
  type AdminOptions,
  adminCommand,
  CliError,
  type OutputFormat,
  print,
  printJson,
  withClient,
  withOutput,
} from './common.js';

function readLog(file: string): EventLog {
  let bytes: Buffer;
  try {
    bytes = readFileSync(file);
  } catch (cause) {
    throw new CliError('ERR_CLI_FILE', `cannot read event log ${file}: ${(cause as Error).message}`, {
      cause,
    });
  }
  return parseLog(bytes, file);
}

function parseLog(bytes: Buffer, source: string): EventLog {
  try {
    return parseEventLog(bytes);
  } catch (cause) {
    if (cause instanceof EventLogError)
      throw new CliError(cause.code, `event log ${source}: ${cause.message}`);
    throw cause;
  }
}

function factsOf(log: EventLog, file: string, bank?: string): BootFacts {
  try {
    return selfBootFacts(log, bank);
  } catch (cause) {
    if (cause instanceof EventLogError) throw new CliError(cause.code, `event log ${file}: ${cause.message}`);
    throw cause;
  }
}

function pcrList(text: string): number[] {
  const pcrs = text.split(',').map((p) => p.trim());
  for (const p of pcrs)
    if (!/^(?:[0-9]|1[0-9]|2[0-3])$/.test(p))
      throw new CliError(
        'ERR_CLI_USAGE',
        `--pcrs ${JSON.stringify(text)}: allowed: PCR numbers 0..23, comma-separated`,
      );
  return pcrs.map(Number);
}

function unboundWarnings(facts: BootFacts, pcrs: readonly number[]): string[] {
  return facts.unbound
    .filter((e) => pcrs.includes(e.pcr))
    .map(
      (e) =>
        `warning: event ${e.index} (PCR ${e.pcr}, ${e.typeName}, offset ${e.offset}) does not bind (${e.meaning.kind === 'unbound' ? e.meaning.reason : e.meaning.kind}); it is allowed by digest only`,
    );
}

interface LearnFlags extends AdminOptions {
  eventlog?: string;
  fromNode?: string;
  name: string;
  out?: string;
  pcrs?: string;
  description?: string;
}

function learnCommand(): Command {
  return adminCommand(
    new Command('learn')
      .description("write a firmware profile that allows exactly a golden host's boot, from its event log")
      .option('--eventlog <file>', "the golden host's binary_bios_measurements")
      .option(
        '--from-node <spiffe-id>',
        'learn from the last event log the running server verified for this node',
      )
      .requiredOption('--name <name>', 'profile name (also its file name: <name>.yaml)')
      .option('--out <file>', 'write the profile here (default: standard output)')
      .option(
        '--pcrs <list>',
        `PCRs the profile covers (default: ${DEFAULT_LEARN_PCRS.join(',')}, those the log extends)`,
      )
      .option('--description <text>', 'description kept in the profile'),
  ).action(async (flags: LearnFlags) => {
    if ((flags.eventlog === undefined) === (flags.fromNode === undefined))
      throw new CliError(
        'ERR_CLI_USAGE',
        'profile learn needs exactly one of --eventlog FILE and --from-node SPIFFE_ID',
      );
    let log: EventLog;
    let source: string;
    if (flags.fromNode !== undefined) {
      const id = flags.fromNode;
      const { event_log } = await withClient(flags, (c) =>
        c.call('ProfileService', 'GetNodeEventLog', { spiffe_id: id }),
      );
      source = `the event log the server last verified for ${id}`;
      log = parseLog(Buffer.from(event_log), source);
    } else {
      source = flags.eventlog ?? '';
      log = readLog(source);
    }
    const facts = factsOf(log, source);
    const profile = learnProfile(facts, {
      name: flags.name,
      ...(flags.description !== undefined ? { description: flags.description } : {}),
      ...(flags.pcrs !== undefined ? { pcrs: pcrList(flags.pcrs) } : {}),
    });
    for (const w of unboundWarnings(facts, profile.pcrs)) process.stderr.write(`${w}\n`);
    const yaml = profileYaml(
      profile,
      `Firmware profile learnt by "ironroot-server profile learn" from ${source}.\nEvery digest and text below is allowed; review it before assigning the profile to nodes.`,
    );
    if (flags.out === undefined) {
      print(yaml);
      return;
    }
    writeFileSync(flags.out, yaml, { mode: 0o644 });
    process.stderr.write(`wrote profile ${profile.name} to ${flags.out}\n`);
  });
}

interface CheckFlags {
  profile: string;
  eventlog: string;
  output: OutputFormat;
}

/** Offline, the log's own replay stands in for the quote. */
function checkOffline(profile: FirmwareProfile, log: EventLog, file: string): Violation[] {
  const facts = factsOf(log, file, profile.bank);
  const replayed = replay(log).banks.get(profile.bank)?.pcrs ?? new Map<number, Buffer>();
  const values = new Map([...replayed].map(([pcr, v]) => [pcr, v.toString('hex')]));
  return evaluateProfile(profile, {
    facts: { ...facts, pcrs: [...new Set([...facts.pcrs, ...profile.pcrs])] },
    pcrValues: values,
  });
}

function checkCommand(): Command {
  return withOutput(new Command('check'))
    .description(
      'check an event log against a firmware profile: exit 0 when it fits, 1 when not, 2 on bad input',
    )
    .requiredOption('--profile <file>', 'firmware profile (YAML)')
    .requiredOption('--eventlog <file>', 'binary_bios_measurements to check')
    .action((flags: CheckFlags) => {
      let violations: Violation[];
      let name: string;
      try {
        const { profile } = loadProfileFile(flags.profile);
        name = profile.name;
        violations = checkOffline(profile, readLog(flags.eventlog), flags.eventlog);
      } catch (error) {
        reportCliError(error, flags.output);
        process.exitCode = 2;
        return;
      }
      if (flags.output === 'json') printJson({ profile: name, fits: violations.length === 0, violations });
      else if (violations.length === 0) print(`${flags.eventlog} fits profile ${name}`);
      else
        print(
          [
            `${flags.eventlog} does not fit profile ${name}: ${violations.length} violation(s)`,
            ...violations.map((v) => `  ${formatViolation(v)}`),
          ].join('\n'),
        );
      if (violations.length > 0) process.exitCode = 1;
    });
}

interface ShowFlags extends AdminOptions {
  name: string;
}

function formatSummary(p: ProfileMessage): string {
  return `${p.name.padEnd(32)} ${p.default ? 'default' : '       '} PCRs ${p.pcrs.join(',')}  ${p.file}`;
}

/** `profile learn|check|list|show`. */
export function profileCommand(): Command {
  const profile = new Command('profile').description('firmware profiles: what a node may have booted');
  profile.addCommand(learnCommand());
  profile.addCommand(checkCommand());
  profile.addCommand(
    adminCommand(
      new Command('list').description('list the firmware profiles the running server loaded'),
    ).action(async (flags: AdminOptions) => {
      const { profiles, mode } = await withClient(flags, (c) => c.call('ProfileService', 'ListProfiles', {}));
      if (flags.output === 'json') printJson({ measured_boot: mode, profiles });
      else if (mode === 'none') print('measured_boot: none (no firmware profiles in use)');
      else print(profiles.map(formatSummary).join('\n') || 'no profiles');
    }),
  );
  profile.addCommand(
    adminCommand(new Command('show').description('print one loaded firmware profile as YAML'))
      .requiredOption('--name <name>', 'profile name')
      .action(async (flags: ShowFlags) => {
        const p = await withClient(flags, (c) =>
          c.call('ProfileService', 'GetProfile', { name: flags.name }),
        );
        if (flags.output === 'json') printJson(p);
        else print(p.yaml);
      }),
  );
  return profile;
}
