import { createHash, hash } from 'node:crypto';
import { EV, hashAlgorithmByName, PCR_COUNT, pcrInitialValue } from './constants.js';
import { EventLogError } from './errors.js';
import type { EventLog, LogEvent } from './parse.js';

const STARTUP_LOCALITY = Buffer.from('StartupLocality\0', 'latin1');
/** PC Client PFP: an H-CRTM sequence runs at locality 4, which the TPM writes into PCR0's reset value. */
const HCRTM_LOCALITY = 4;

export interface BankReplay {
  /**
   * Replayed value of every PCR 0–23 that this bank can vouch for: the reset value for PCRs the
   * log never extends. A PCR is absent when an event extending it lacks this bank's digest.
   */
  pcrs: Map<number, Buffer>;
  /**
   * PCRs this bank cannot replay, each with the first event that has no digest for the bank. Logs
   * do this: tpm2-tools' small fixtures declare four banks and log two.
   */
  missingDigest: Map<number, number>;
}

export interface ReplayResult {
  /** Per bank (only banks the log declares and this host can hash), the replayed PCR values. */
  banks: Map<string, BankReplay>;
  /** PCRs the log extends at least once (EV_NO_ACTION does not count). */
  extended: Set<number>;
  /** Index of the last event that extends each PCR: the one to blame when a replay diverges. */
  lastEvent: Map<number, number>;
  /** PCR0's start locality when a StartupLocality or H-CRTM event set it. */
  startupLocality: number | undefined;
}

/** Extra events appended to a PCR before replaying it, to model a known firmware omission. */
interface Amendment {
  pcr: number;
  actions: readonly string[];
}

/**
 * Replay the log per bank. Rules (PC Client PFP; tpm2-tools and go-attestation agree): EV_NO_ACTION
 * is never extended; PCRs 17–22 start at all-ones, the others at zero; a StartupLocality
 * EV_NO_ACTION event before any PCR0 extension sets the last byte of PCR0's start value to the
 * locality, and an EV_EFI_HCRTM_EVENT sets it to 4.
 */
export function replay(log: EventLog): ReplayResult {
  return replayWith(log, undefined);
}

function replayWith(log: EventLog, amendment: Amendment | undefined): ReplayResult {
  const extended = new Set<number>();
  const lastEvent = new Map<number, number>();
  let startupLocality: number | undefined;
  const extends_: LogEvent[] = [];
  for (const event of log.events) {
    if (event.type === EV.NO_ACTION) {
      if (event.pcr === 0 && isStartupLocality(event)) {
        if (extended.has(0)) throw lateLocality(event, 'StartupLocality');
        startupLocality = event.data.readUInt8(STARTUP_LOCALITY.length);
      }
      continue;
    }
    if (event.type === EV.EFI_HCRTM_EVENT && event.pcr === 0) {
      if (extended.has(0)) throw lateLocality(event, 'H-CRTM');
      startupLocality = HCRTM_LOCALITY;
    }
    extended.add(event.pcr);
    lastEvent.set(event.pcr, event.index);
    extends_.push(event);
  }

  const banks = new Map<string, BankReplay>();
  for (const bank of log.banks) {
    const alg = hashAlgorithmByName(bank);
    if (alg === undefined) continue;
    const pcrs = new Map<number, Buffer>();
    for (let pcr = 0; pcr < PCR_COUNT; pcr++) pcrs.set(pcr, pcrInitialValue(pcr, alg.size));
    if (startupLocality !== undefined) {
      const pcr0 = pcrInitialValue(0, alg.size);
      pcr0[alg.size - 1] = startupLocality;
      pcrs.set(0, pcr0);
    }
    // One-shot hashing of `current || digest` laid out in one reused buffer: a Hash object, or a
    // concatenated copy, per extend cost more than the hash itself (a log has hundreds).
    const scratch = Buffer.alloc(2 * alg.size);
    const extend = (pcr: number, digest: Buffer): void => {
      const current = pcrs.get(pcr) ?? pcrInitialValue(pcr, alg.size);
      // Both are alg.size bytes: the parser holds a known bank's digests to its size.
      current.copy(scratch, 0);
      digest.copy(scratch, alg.size);
      pcrs.set(pcr, hash(alg.nodeName, scratch, 'buffer'));
    };
    const missingDigest = new Map<number, number>();
    for (const event of extends_) {
      const digest = event.digests.find((d) => d.bank === bank);
      if (digest === undefined) {
        if (!missingDigest.has(event.pcr)) missingDigest.set(event.pcr, event.index);
        continue;
      }
      extend(event.pcr, digest.digest);
    }
    if (amendment !== undefined && !missingDigest.has(amendment.pcr)) {
      for (const action of amendment.actions) {
        extend(amendment.pcr, createHash(alg.nodeName).update(action, 'latin1').digest());
      }
    }
    for (const pcr of missingDigest.keys()) pcrs.delete(pcr);
    banks.set(bank, { pcrs, missingDigest });
  }
  return { banks, extended, lastEvent, startupLocality };
}

function isStartupLocality(event: LogEvent): boolean {
  return (
    event.data.length === STARTUP_LOCALITY.length + 1 &&
    event.data.subarray(0, STARTUP_LOCALITY.length).equals(STARTUP_LOCALITY)
  );
}

function lateLocality(event: LogEvent, what: string): EventLogError {
  return new EventLogError(
    'ERR_EVENTLOG_MALFORMED',
    `Event ${event.index} sets PCR0's start locality (${what}) after PCR0 was already extended`,
    { offset: event.offset, eventIndex: event.index, pcr: 0 },
  );
}

/** PCR values as a TPM reports them: bank name → PCR index → value. */
export type PcrValues = ReadonlyMap<string, ReadonlyMap<number, Buffer>>;

export interface CompareOptions {
  /**
   * PCRs the caller's policy relies on. Each must be extended by the log: a PCR with no events
   * replays trivially to its reset value, so the log would vouch for nothing in it.
   */
  required?: readonly number[];
}

export interface CompareResult {
  replay: ReplayResult;
  /** Firmware workarounds that had to be applied for the log to match, by name. Empty if none. */
  workarounds: string[];
}

/**
 * go-attestation #153: some firmware extends PCR5 with the ExitBootServices EV_EFI_ACTION events
 * but does not log them. The action strings come from the PC Client PFP.
 */
export const WORKAROUND_MISSING_EXIT_BOOT_SERVICES = 'missing-exit-boot-services-events';
const EBS_INVOCATION = 'Exit Boot Services Invocation';
const EBS_VARIANTS: readonly (readonly string[])[] = [
  [EBS_INVOCATION, 'Exit Boot Services Returned with Success'],
  [EBS_INVOCATION, 'Exit Boot Services Returned with Failure'],
  [EBS_INVOCATION, 'Exit Boot Services Returned with Failure', 'Exit Boot Services Returned with Success'],
];
const EBS_PCR = 5;

/**
 * Check reported PCR values against the log. Every given (bank, PCR) must equal the replay; the
 * bank must be one the log declares. Throws `ERR_EVENTLOG_REPLAY_MISMATCH` naming the first PCR
 * (in bank order, then PCR order) that diverges and the last event that extended it.
 */
export function compareWithPcrs(log: EventLog, pcrs: PcrValues, options: CompareOptions = {}): CompareResult {
  for (const bank of pcrs.keys()) {
    if (!log.banks.includes(bank)) {
      throw new EventLogError(
        'ERR_EVENTLOG_BANK_NOT_IN_LOG',
        `PCR values were given for the ${bank} bank, but the log records only ${log.banks.join(', ')}; it cannot vouch for ${bank}`,
        { bank },
      );
    }
    if (hashAlgorithmByName(bank) === undefined) {
      throw new EventLogError('ERR_EVENTLOG_UNKNOWN_ALGORITHM', `ironroot cannot replay the ${bank} bank`, {
        bank,
      });
    }
  }
  const base = replay(log);
  for (const pcr of options.required ?? []) {
    if (!base.extended.has(pcr)) {
      throw new EventLogError(
        'ERR_EVENTLOG_PCR_NOT_EXTENDED',
        `Policy relies on PCR ${pcr}, but the event log never extends it`,
        { pcr },
      );
    }
  }
  const first = firstMismatch(base, pcrs);
  if (first === undefined) return { replay: base, workarounds: [] };
  if (first.pcr === EBS_PCR && needsEbsWorkaround(log)) {
    for (const actions of EBS_VARIANTS) {
      const amended = replayWith(log, { pcr: EBS_PCR, actions });
      if (firstMismatch(amended, pcrs) === undefined) {
        return { replay: amended, workarounds: [WORKAROUND_MISSING_EXIT_BOOT_SERVICES] };
      }
    }
  }
  const last = base.lastEvent.get(first.pcr);
  throw new EventLogError(
    'ERR_EVENTLOG_REPLAY_MISMATCH',
    `PCR ${first.pcr} (${first.bank}) does not replay: the TPM reports ${first.reported.toString('hex')}, the log gives ${first.replayed.toString('hex')}` +
      (last === undefined ? ' (the log has no events for this PCR)' : ` after event ${last}`),
    { pcr: first.pcr, bank: first.bank, ...(last === undefined ? {} : { eventIndex: last }) },
  );
}

interface Mismatch {
  bank: string;
  pcr: number;
  reported: Buffer;
  replayed: Buffer;
}

function firstMismatch(result: ReplayResult, pcrs: PcrValues): Mismatch | undefined {
  for (const [bank, values] of pcrs) {
    const replayed = result.banks.get(bank);
    for (const pcr of [...values.keys()].sort((a, b) => a - b)) {
      const reported = values.get(pcr);
      if (reported === undefined) continue;
      const missing = replayed?.missingDigest.get(pcr);
      if (missing !== undefined) {
        throw new EventLogError(
          'ERR_EVENTLOG_DIGEST_MISSING',
          `PCR ${pcr} cannot be replayed in the ${bank} bank: event ${missing} extends it without a ${bank} digest`,
          { pcr, bank, eventIndex: missing },
        );
      }
      const ours = replayed?.pcrs.get(pcr);
      if (ours === undefined) {
        throw new EventLogError('ERR_EVENTLOG_MALFORMED', `PCR ${pcr} does not exist on a PC Client TPM`, {
          pcr,
          bank,
        });
      }
      if (!ours.equals(reported)) return { bank, pcr, reported, replayed: ours };
    }
  }
  return undefined;
}

/** The workaround applies only to logs that lack every ExitBootServices action in PCR5. */
function needsEbsWorkaround(log: EventLog): boolean {
  return !log.events.some(
    (e) =>
      e.pcr === EBS_PCR &&
      e.type === EV.EFI_ACTION &&
      e.data.toString('latin1').startsWith('Exit Boot Services'),
  );
}
