import { createHash } from 'node:crypto';
import { EV, hashAlgorithmByName } from './constants.js';
import { type DecodedEvent, decodeEvent } from './decode.js';
import { EventLogError, type EventLogErrorCode } from './errors.js';
import { type BootFacts, selfBootFacts } from './facts.js';
import type { EventLog, EventLogFormat, LogEvent } from './parse.js';

export interface DecodeFailure {
  eventIndex: number;
  code: EventLogErrorCode;
  message: string;
}

export interface DigestMismatch {
  eventIndex: number;
  typeName: string;
  bank: string;
}

export interface UnboundEvent {
  eventIndex: number;
  pcr: number;
  typeName: string;
  offset: number;
  reason: string;
}

export interface EventLogSummary {
  format: EventLogFormat;
  banks: string[];
  eventCount: number;
  /**
   * From the SecureBoot EV_EFI_VARIABLE_DRIVER_CONFIG event in PCR7, only when its data hashes to its
   * digest: `unknown` when the log has none, when it does not bind, or when its data is not the single
   * byte the UEFI spec defines (an empty variable is seen in the wild, go-tpm-tools' AllowEmptySBVar).
   */
  secureBoot: 'enabled' | 'disabled' | 'unknown';
  /** Events whose data does not bind to their digest (see facts.ts), in the log's preferred bank. */
  unbound: UnboundEvent[];
  /** Names of the UEFI variables measured into PCR7 as driver config (SecureBoot, PK, KEK, db, dbx). */
  secureBootVariables: string[];
  /** An "Exit Boot Services Invocation" EV_EFI_ACTION is in the log. */
  exitBootServicesInvoked: boolean;
  exitBootServicesResult: 'success' | 'failure' | undefined;
  /** PCRs that received an EV_SEPARATOR, and those whose separator carries the error value. */
  separators: number[];
  separatorErrors: number[];
  /** EV_EFI_BOOT_SERVICES_APPLICATION events: bootloaders, shims, kernels started by firmware. */
  bootApplications: number;
  crtmVersion: string | undefined;
  startupLocality: number | undefined;
  /**
   * Events whose digest can be recomputed from their data (separator, EFI action, driver config,
   * GPT, S-CRTM version) but does not match: the event data says something the PCR does not.
   */
  digestMismatches: DigestMismatch[];
  /** Events whose data does not decode as their type says. */
  undecodable: DecodeFailure[];
  /** Firmware quirks the decoder had to tolerate for this log, by name. Empty if none. */
  workarounds: string[];
}

export interface DecodedLogEvent {
  event: LogEvent;
  decoded: DecodedEvent | undefined;
  error: DecodeFailure | undefined;
}

/** Decode every event, keeping a failure per event instead of giving up on the whole log. */
export function decodeAll(log: EventLog): DecodedLogEvent[] {
  return log.events.map((event) => {
    try {
      return { event, decoded: decodeEvent(event, log.specId), error: undefined };
    } catch (e) {
      if (!(e instanceof EventLogError)) throw e;
      return {
        event,
        decoded: undefined,
        error: { eventIndex: event.index, code: e.code, message: e.message },
      };
    }
  });
}

/** Event types whose digest is the hash of their data as logged (PC Client PFP §10.4.1). */
const DATA_HASHED = new Set<number>([
  EV.SEPARATOR,
  EV.EFI_ACTION,
  EV.EFI_VARIABLE_DRIVER_CONFIG,
  EV.EFI_GPT_EVENT,
  EV.S_CRTM_VERSION,
]);

/** Shim's authority event whose UEFI_VARIABLE_DATA lengths do not cover the event (go-attestation #157). */
export const WORKAROUND_SHIM_AUTHORITY_TRAILING_DATA = 'shim-authority-trailing-data';

export function checkDataDigests(log: EventLog): DigestMismatch[] {
  const out: DigestMismatch[] = [];
  for (const event of log.events) {
    if (!DATA_HASHED.has(event.type)) continue;
    for (const d of event.digests) {
      const alg = hashAlgorithmByName(d.bank);
      if (alg === undefined) continue;
      if (!createHash(alg.nodeName).update(event.data).digest().equals(d.digest)) {
        out.push({ eventIndex: event.index, typeName: event.typeName, bank: d.bank });
      }
    }
  }
  return out;
}

function selfFactsIfHashable(log: EventLog): BootFacts | undefined {
  try {
    return selfBootFacts(log);
  } catch (e) {
    if (e instanceof EventLogError) return undefined;
    throw e;
  }
}

export function summarize(log: EventLog, decoded: DecodedLogEvent[] = decodeAll(log)): EventLogSummary {
  const secureBootVariables: string[] = [];
  let exitBootServicesInvoked = false;
  let exitBootServicesResult: EventLogSummary['exitBootServicesResult'];
  const separators = new Set<number>();
  const separatorErrors = new Set<number>();
  let bootApplications = 0;
  let crtmVersion: string | undefined;
  let startupLocality: number | undefined;
  const workarounds = new Set<string>();
  for (const { event, decoded: d } of decoded) {
    if (d === undefined) continue;
    if (d.kind === 'uefi-variable' && d.trailing !== undefined)
      workarounds.add(WORKAROUND_SHIM_AUTHORITY_TRAILING_DATA);
    if (d.kind === 'uefi-variable' && event.type === EV.EFI_VARIABLE_DRIVER_CONFIG && event.pcr === 7) {
      secureBootVariables.push(d.name);
    } else if (d.kind === 'separator') {
      separators.add(event.pcr);
      if (d.error) separatorErrors.add(event.pcr);
    } else if (d.kind === 'text' && event.type === EV.EFI_ACTION) {
      if (d.text === 'Exit Boot Services Invocation') exitBootServicesInvoked = true;
      if (d.text === 'Exit Boot Services Returned with Success') exitBootServicesResult = 'success';
      if (d.text === 'Exit Boot Services Returned with Failure') exitBootServicesResult = 'failure';
    } else if (d.kind === 'text' && event.type === EV.S_CRTM_VERSION) {
      crtmVersion = d.text;
    } else if (d.kind === 'startup-locality') {
      startupLocality = d.locality;
    } else if (d.kind === 'image-load' && event.type === EV.EFI_BOOT_SERVICES_APPLICATION) {
      bootApplications++;
    }
  }
  const facts = selfFactsIfHashable(log);
  return {
    format: log.format,
    banks: log.banks,
    eventCount: log.events.length,
    secureBoot: facts?.secureBoot ?? 'unknown',
    unbound: (facts?.unbound ?? []).map((e) => ({
      eventIndex: e.index,
      pcr: e.pcr,
      typeName: e.typeName,
      offset: e.offset,
      reason: e.meaning.kind === 'unbound' ? e.meaning.reason : '',
    })),
    secureBootVariables,
    exitBootServicesInvoked,
    exitBootServicesResult,
    separators: [...separators].sort((a, b) => a - b),
    separatorErrors: [...separatorErrors].sort((a, b) => a - b),
    bootApplications,
    crtmVersion,
    startupLocality,
    digestMismatches: checkDataDigests(log),
    undecodable: decoded.flatMap((d) => (d.error === undefined ? [] : [d.error])),
    workarounds: [...workarounds],
  };
}
