/**
 * What a verifier may believe about a boot. An event's digest is trustworthy once its PCR was quoted
 * and the log replayed to the quoted value; its *data* is not covered by anything in general. So a
 * fact read from event data (the Secure Boot byte, db/dbx, a command line) counts only when that
 * data hashes, in the form the PC Client PFP (or the known producer) measures, to the replayed
 * digest. Events whose digest measures something outside the log (an image, a firmware blob, a
 * file) contribute that digest and nothing else: their data is a label.
 *
 * @module
 */
import { hash as digestOf } from 'node:crypto';
import { EV, hashAlgorithmByName } from './constants.js';
import { decodeEvent, type UefiVariable } from './decode.js';
import { EventLogError } from './errors.js';
import type { EventLog, LogEvent } from './parse.js';

/** What a bound event means; `content` and `unbound` events say nothing beyond their digest. */
export type EventMeaning =
  | { kind: 'separator'; error: boolean }
  | { kind: 'action'; text: string }
  | { kind: 'variable'; variable: UefiVariable }
  | { kind: 'crtm-version'; version: string }
  | { kind: 'grub-command'; command: string }
  | { kind: 'kernel-cmdline'; cmdline: string }
  | { kind: 'gpt' }
  /** Bound, but of a type ironroot does not interpret (EV_EVENT_TAG, EV_COMPACT_HASH …). */
  | { kind: 'opaque' }
  /** The digest measures something the log only names (image, firmware blob, file, MOK list). */
  | { kind: 'content'; label: string | undefined }
  /** The data does not hash to the digest in any accepted form, or does not decode. */
  | { kind: 'unbound'; reason: string };

export interface BootEvent {
  index: number;
  offset: number;
  /** Offset of the event data in the log, for errors found while reading it. */
  dataOffset: number;
  pcr: number;
  type: number;
  typeName: string;
  /** Lowercase hex digest in the facts' bank. */
  digest: string;
  meaning: EventMeaning;
}

export interface BootFacts {
  bank: string;
  /** PCRs the facts cover: those quoted and replayed. Nothing is said about any other PCR. */
  pcrs: readonly number[];
  /** Every event extending a covered PCR, in log order (EV_NO_ACTION excluded). */
  events: BootEvent[];
  /** Events of `events` that do not bind, reported by name and contributing nothing. */
  unbound: BootEvent[];
  /** From the bound SecureBoot variable in PCR 7; `unknown` when PCR 7 is not covered or none binds. */
  secureBoot: 'enabled' | 'disabled' | 'unknown';
}

export interface FactOptions {
  /** The bank whose digests were replayed against the quote. */
  bank: string;
  /** The quoted PCRs of that bank that replayed to the quoted values. */
  pcrs: readonly number[];
}

/** PC Client PFP: these event types measure their data exactly as logged. */
const HASHED_AS_LOGGED = new Set<number>([
  EV.SEPARATOR,
  EV.EFI_ACTION,
  EV.EFI_GPT_EVENT,
  EV.S_CRTM_VERSION,
  EV.EFI_VARIABLE_DRIVER_CONFIG,
  EV.EFI_VARIABLE_BOOT2,
  EV.EFI_VARIABLE_AUTHORITY,
]);

/** The PCR grub measures its commands and the kernel command line into (`GRUB_STRING_PCR`). */
const GRUB_STRING_PCR = 8;
const GRUB_PREFIXES = { 'grub_cmd: ': 'grub-command', 'kernel_cmdline: ': 'kernel-cmdline' } as const;

/**
 * Bind every event of the covered PCRs. The caller must already have checked (compareWithPcrs) that
 * the log replays to the quoted values of `pcrs` in `bank`: binding rests on those digests.
 */
export function bootFacts(log: EventLog, options: FactOptions): BootFacts {
  const alg = hashAlgorithmByName(options.bank);
  if (alg === undefined || !log.banks.includes(options.bank))
    throw new EventLogError(
      'ERR_EVENTLOG_BANK_NOT_IN_LOG',
      `the log cannot vouch for the ${options.bank} bank (it records ${log.banks.join(', ')})`,
      { bank: options.bank },
    );
  const covered = new Set(options.pcrs);
  // One-shot: a Hash object per event cost about as much again as the hashing.
  const hash = (data: Buffer): Buffer => digestOf(alg.nodeName, data, 'buffer');
  const events: BootEvent[] = [];
  for (const event of log.events) {
    if (event.type === EV.NO_ACTION || !covered.has(event.pcr)) continue;
    const digest = event.digests.find((d) => d.bank === options.bank)?.digest;
    // compareWithPcrs refuses a covered PCR with a digest missing in this bank; stay safe regardless.
    if (digest === undefined) continue;
    events.push({
      index: event.index,
      offset: event.offset,
      dataOffset: event.dataOffset,
      pcr: event.pcr,
      type: event.type,
      typeName: event.typeName,
      digest: digest.toString('hex'),
      meaning: meaningOf(event, digest, hash, log),
    });
  }
  return {
    bank: options.bank,
    pcrs: [...covered].sort((a, b) => a - b),
    events,
    unbound: events.filter((e) => e.meaning.kind === 'unbound'),
    secureBoot: covered.has(7) ? secureBootOf(events) : 'unknown',
  };
}

/** Bind a log to itself (its own digests, every PCR it extends): for learning and checking profiles offline. */
export function selfBootFacts(log: EventLog, bank: string = preferredBank(log)): BootFacts {
  const pcrs = new Set(log.events.filter((e) => e.type !== EV.NO_ACTION).map((e) => e.pcr));
  return bootFacts(log, { bank, pcrs: [...pcrs] });
}

/** SHA-256 when the log has it, else its first bank that this host can hash. */
export function preferredBank(log: EventLog): string {
  if (log.banks.includes('sha256')) return 'sha256';
  const bank = log.banks.find((b) => hashAlgorithmByName(b) !== undefined);
  if (bank === undefined)
    throw new EventLogError(
      'ERR_EVENTLOG_UNKNOWN_ALGORITHM',
      `ironroot cannot hash any of ${log.banks.join(', ')}`,
    );
  return bank;
}

function secureBootOf(events: readonly BootEvent[]): BootFacts['secureBoot'] {
  const states = new Set<BootFacts['secureBoot']>();
  for (const e of events) {
    if (e.pcr !== 7 || e.type !== EV.EFI_VARIABLE_DRIVER_CONFIG || e.meaning.kind !== 'variable') continue;
    if (e.meaning.variable.name !== 'SecureBoot') continue;
    const v = e.meaning.variable.secureBoot;
    states.add(v === undefined ? 'unknown' : v ? 'enabled' : 'disabled');
  }
  // Two SecureBoot measurements that disagree say nothing certain.
  const [only] = states;
  return states.size === 1 && only !== undefined ? only : 'unknown';
}

function meaningOf(
  event: LogEvent,
  digest: Buffer,
  hash: (b: Buffer) => Buffer,
  log: EventLog,
): EventMeaning {
  if (isContent(event)) return { kind: 'content', label: labelOf(event) };
  let decoded: ReturnType<typeof decodeEvent>;
  try {
    decoded = decodeEvent(event, log.specId);
  } catch (e) {
    if (e instanceof EventLogError)
      return { kind: 'unbound', reason: `its data does not decode: ${e.message}` };
    throw e;
  }
  if (event.type === EV.IPL && event.pcr === GRUB_STRING_PCR) return grubString(event, digest, hash);
  const asLogged = hash(event.data).equals(digest);
  if (event.type === EV.EFI_VARIABLE_BOOT && decoded.kind === 'uefi-variable') {
    // PFP: EV_EFI_VARIABLE_BOOT measures VariableData alone; some firmware hashes the whole structure.
    return asLogged || hash(decoded.data).equals(digest)
      ? { kind: 'variable', variable: decoded }
      : unboundData('neither the UEFI_VARIABLE_DATA nor its VariableData');
  }
  if (!asLogged) return unboundData('the event data');
  if (!HASHED_AS_LOGGED.has(event.type)) return { kind: 'opaque' };
  switch (decoded.kind) {
    case 'separator':
      return { kind: 'separator', error: decoded.error };
    case 'uefi-variable':
      return { kind: 'variable', variable: decoded };
    case 'gpt':
      return { kind: 'gpt' };
    case 'text':
      return event.type === EV.S_CRTM_VERSION
        ? { kind: 'crtm-version', version: decoded.text }
        : { kind: 'action', text: decoded.text };
    case 'bytes':
      return { kind: 'crtm-version', version: `hex:${event.data.toString('hex')}` };
    default:
      return {
        kind: 'unbound',
        reason: `its data decodes as ${decoded.kind}, not as ${event.typeName} data`,
      };
  }
}

function unboundData(form: string): EventMeaning {
  return { kind: 'unbound', reason: `the digest is not the hash of ${form}` };
}

/**
 * grub logs `grub_cmd: <command>` and `kernel_cmdline: <line>` with a trailing NUL, and measures
 * the text after the prefix without the NUL. That form only.
 */
function grubString(event: LogEvent, digest: Buffer, hash: (b: Buffer) => Buffer): EventMeaning {
  const text = event.data.toString('latin1');
  for (const [prefix, kind] of Object.entries(GRUB_PREFIXES)) {
    if (!text.startsWith(prefix) || !text.endsWith('\0')) continue;
    const measured = event.data.subarray(prefix.length, event.data.length - 1);
    if (!hash(measured).equals(digest)) return unboundData(`the text after "${prefix.trim()}"`);
    const value = measured.toString('utf8');
    return kind === 'grub-command' ? { kind, command: value } : { kind, cmdline: value };
  }
  return { kind: 'unbound', reason: 'PCR 8 EV_IPL data is not a grub_cmd or kernel_cmdline string' };
}

/** Event types (and grub/shim EV_IPL uses) whose digest measures something outside the log. */
function isContent(event: LogEvent): boolean {
  switch (event.type) {
    case EV.POST_CODE:
    case EV.S_CRTM_CONTENTS:
    case EV.CPU_MICROCODE:
    case EV.EFI_PLATFORM_FIRMWARE_BLOB:
    case EV.EFI_PLATFORM_FIRMWARE_BLOB2:
    case EV.EFI_BOOT_SERVICES_APPLICATION:
    case EV.EFI_BOOT_SERVICES_DRIVER:
    case EV.EFI_RUNTIME_SERVICES_DRIVER:
    case EV.EFI_HANDOFF_TABLES:
    case EV.EFI_HANDOFF_TABLES2:
      return true;
    case EV.IPL:
      // grub measures files into PCR 9 and shim its MOK variables into PCR 14, naming them in the data.
      return event.pcr !== GRUB_STRING_PCR;
    default:
      return false;
  }
}

/** A printable name from the data, for people only (never a fact). */
function labelOf(event: LogEvent): string | undefined {
  if (event.type !== EV.IPL) return undefined;
  const text = event.data.toString('latin1').replace(/\0+$/, '');
  // biome-ignore lint/suspicious/noControlCharactersInRegex: control characters mark binary data
  return text.length > 0 && !/[\u0000-\u001f\u007f-\u00ff]/.test(text) ? text : undefined;
}
