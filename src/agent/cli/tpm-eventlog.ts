import { readFile } from 'node:fs/promises';
import { Command } from 'commander';
import { CliError, type OutputFormat, withOutput } from '../../host/index.js';
import type {
  DecodedEvent,
  DecodedLogEvent,
  EventLog,
  EventLogSummary,
  ReplayResult,
} from '../../tpm/eventlog/index.js';

/** Where Linux exports the firmware's TCG event log. */
export const DEFAULT_EVENTLOG_PATH = '/sys/kernel/security/tpm0/binary_bios_measurements';

/**
 * `eventlog [FILE] [--output text|json]`: print a TCG measured-boot event log, decoded, and the PCR values
 * it replays to. Output goes through commander's output configuration, so a caller (or a test)
 * can redirect it with `configureOutput`; failures are coded errors, which runCli reports.
 */
export function eventlogCommand(): Command {
  const command: Command = withOutput(new Command('eventlog'))
    .description('print the measured-boot event log, decoded, and the PCR values it replays to')
    .argument('[file]', 'binary event log', DEFAULT_EVENTLOG_PATH)
    .action(async (file: string, options: { output: OutputFormat }) => {
      const write = (text: string): void => {
        const out = command.configureOutput().writeOut;
        if (out === undefined) process.stdout.write(text);
        else out(text);
      };
      let bytes: Buffer;
      try {
        bytes = await readFile(file);
      } catch (e) {
        throw new CliError('ERR_EVENTLOG_READ', `cannot read ${file}: ${(e as Error).message}`, { cause: e });
      }
      // Imported here, not with this file: `run` builds this command too and never calls it.
      const { decodeAll, EventLogError, parseEventLog, replay, summarize } = await import(
        '../../tpm/eventlog/index.js'
      );
      let log: EventLog;
      let replayed: ReplayResult;
      try {
        log = parseEventLog(bytes);
        replayed = replay(log);
      } catch (e) {
        if (!(e instanceof EventLogError)) throw e;
        const where = e.offset === undefined ? '' : ` at byte offset ${e.offset}`;
        throw new CliError(e.code, `${file}${where}: ${e.message}`, { cause: e });
      }
      const decoded = decodeAll(log);
      const summary = summarize(log, decoded);
      write(
        options.output === 'json'
          ? `${toJson(log, decoded, replayed, summary)}\n`
          : toText(log, decoded, replayed, summary),
      );
    });
  return command;
}

function hex(b: Buffer): string {
  return b.toString('hex');
}

function describe(d: DecodedEvent, data: Buffer): string {
  switch (d.kind) {
    case 'spec-id':
      return `${d.specId.signature}: ${d.specId.algorithms.map((a) => `${a.name}/${a.digestSize}`).join(' ')}`;
    case 'startup-locality':
      return `StartupLocality ${d.locality}`;
    case 'no-action':
      return `no action: ${JSON.stringify(d.signature)}`;
    case 'uefi-variable': {
      const state =
        d.secureBoot === undefined ? '' : ` (Secure Boot ${d.secureBoot ? 'enabled' : 'disabled'})`;
      const value = d.data.length <= 16 ? ` = ${hex(d.data) || '(empty)'}` : `, ${d.data.length} bytes`;
      return `${d.name} {${d.guid}}${value}${state}`;
    }
    case 'separator':
      return `separator ${d.value === undefined ? hex(data) : `0x${d.value.toString(16).padStart(8, '0')}`}${d.error ? ' (ERROR)' : ''}`;
    case 'image-load':
      return `image at 0x${d.location.toString(16)}, ${d.length} bytes, device path ${d.devicePath.length} bytes`;
    case 'firmware-blob':
      return `${d.description === undefined ? '' : `${d.description} `}blob at 0x${d.base.toString(16)}, 0x${d.length.toString(16)} bytes`;
    case 'gpt':
      return `GPT disk {${d.diskGuid}}, ${d.partitions.length} partitions`;
    case 'text':
      return JSON.stringify(d.text);
    case 'bytes':
    case 'raw':
      return `${data.length} bytes`;
  }
}

function toText(
  log: EventLog,
  decoded: DecodedLogEvent[],
  replayed: ReplayResult,
  s: EventLogSummary,
): string {
  const lines: string[] = [];
  lines.push(`format: ${log.format}, banks: ${log.banks.join(', ')}, ${log.events.length} events`, '');
  for (const { event, decoded: d, error } of decoded) {
    const what =
      d === undefined ? `UNDECODABLE ${error?.code ?? ''}: ${error?.message ?? ''}` : describe(d, event.data);
    lines.push(
      `#${event.index} PCR ${event.pcr === 0xffffffff ? '-' : event.pcr} ${event.typeName}: ${what}`,
    );
    for (const digest of event.digests) lines.push(`    ${digest.bank} ${hex(digest.digest)}`);
  }
  lines.push(
    '',
    `Secure Boot: ${s.secureBoot}`,
    `ExitBootServices: ${s.exitBootServicesInvoked ? `invoked${s.exitBootServicesResult === undefined ? '' : `, ${s.exitBootServicesResult}`}` : 'not in the log'}`,
    `separators: PCR ${s.separators.join(' ') || '-'}${s.separatorErrors.length > 0 ? `; error value in PCR ${s.separatorErrors.join(' ')}` : ''}`,
  );
  if (s.startupLocality !== undefined) lines.push(`startup locality: ${s.startupLocality}`);
  if (s.crtmVersion !== undefined) lines.push(`S-CRTM version: ${JSON.stringify(s.crtmVersion)}`);
  for (const m of s.digestMismatches)
    lines.push(
      `WARNING: event ${m.eventIndex} (${m.typeName}): ${m.bank} digest is not the hash of its data`,
    );
  lines.push('', 'replayed PCRs (those the log extends):');
  for (const [bank, values] of replayed.banks) {
    lines.push(`  ${bank}:`);
    for (const pcr of [...replayed.extended].sort((a, b) => a - b)) {
      const value = values.pcrs.get(pcr);
      const missing = values.missingDigest.get(pcr);
      lines.push(
        `    ${String(pcr).padStart(2)}: ${value === undefined ? `not replayable (event ${missing ?? '?'} has no ${bank} digest)` : hex(value)}`,
      );
    }
  }
  return `${lines.join('\n')}\n`;
}

function toJson(
  log: EventLog,
  decoded: DecodedLogEvent[],
  replayed: ReplayResult,
  summary: EventLogSummary,
): string {
  const pcrs: Record<string, Record<string, string>> = {};
  for (const [bank, values] of replayed.banks) {
    pcrs[bank] = Object.fromEntries(
      [...replayed.extended]
        .sort((a, b) => a - b)
        .flatMap((pcr) => {
          const value = values.pcrs.get(pcr);
          return value === undefined ? [] : [[String(pcr), hex(value)]];
        }),
    );
  }
  const doc = {
    format: log.format,
    banks: log.banks,
    events: decoded.map(({ event, decoded: d, error }) => ({
      index: event.index,
      offset: event.offset,
      pcr: event.pcr,
      type: event.type,
      typeName: event.typeName,
      digests: Object.fromEntries(event.digests.map((x) => [x.bank, hex(x.digest)])),
      size: event.data.length,
      decoded: d,
      error,
    })),
    summary,
    pcrs,
  };
  // Buffers as hex and 64-bit values as decimal strings: JSON has neither.
  return JSON.stringify(
    doc,
    function (this: Record<string, unknown>, key: string, value: unknown) {
      const raw = this[key];
      if (Buffer.isBuffer(raw)) return hex(raw);
      if (typeof value === 'bigint') return value.toString();
      return value;
    },
    2,
  );
}
