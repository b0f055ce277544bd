import { EV, eventTypeName, hashAlgorithmById, NO_PCR, PCR_COUNT, SHA1 } from './constants.js';
import { EventLogError } from './errors.js';
import { Reader } from './reader.js';

/** One algorithm entry of the Spec ID event: the id, and the digest size the log uses for it. */
export interface SpecIdAlgorithm {
  id: number;
  /** Registry name (`sha256` …), or `alg_0x…` for an algorithm unknown to ironroot. */
  name: string;
  digestSize: number;
}

export interface SpecIdEvent {
  signature: string;
  platformClass: number;
  specVersionMajor: number;
  specVersionMinor: number;
  specErrata: number;
  /** 1: UINTN is 32 bits, 2: 64 bits (TCG_EfiSpecIDEvent). */
  uintnSize: number;
  algorithms: SpecIdAlgorithm[];
  vendorInfo: Buffer;
}

export interface EventDigest {
  algorithmId: number;
  /** Bank name, as in {@link SpecIdAlgorithm.name}. */
  bank: string;
  digest: Buffer;
}

export interface LogEvent {
  /** Position in the log; the first record (the Spec ID event in a crypto-agile log) is 0. */
  index: number;
  /** Byte offset of the record in the log. */
  offset: number;
  pcr: number;
  type: number;
  typeName: string;
  digests: EventDigest[];
  /** The event data, a view into the log buffer. */
  data: Buffer;
  /** Byte offset of the data in the log, so errors found while decoding it can point into the log. */
  dataOffset: number;
}

export type EventLogFormat = 'crypto-agile' | 'sha1';

export interface EventLog {
  format: EventLogFormat;
  /** Present in crypto-agile logs; legacy logs have none (or a TPM 1.2 "Spec ID Event00"). */
  specId: SpecIdEvent | undefined;
  /** Banks the log records digests for, in Spec ID order: only these can be replayed. */
  banks: string[];
  events: LogEvent[];
}

/**
 * Caps that turn an absurd size field into an error before anything is allocated or looped over.
 * The largest real events (Secure Boot db/dbx with many certificates, handoff tables) are tens of
 * kilobytes; the algorithm registry has fewer than 16 hash algorithms.
 */
export const MAX_EVENT_DATA = 16 * 1024 * 1024;
export const MAX_ALGORITHMS = 16;

const SPEC_ID_03 = 'Spec ID Event03\0';
const SPEC_ID_HEADER = 16 + 4 + 4 + 4; // signature, platformClass, version/errata/uintn, algorithm count
const SHA1_EVENT_HEADER = 4 + 4 + 20 + 4;

/**
 * Parse a TCG PC Client event log (`binary_bios_measurements`): crypto-agile (TCG_PCR_EVENT with
 * "Spec ID Event03", then TCG_PCR_EVENT2 records) or legacy SHA-1 (TCG_PCR_EVENT records only).
 * Structure only: event data is kept raw here and decoded by `decodeEvent`.
 */
export function parseEventLog(log: Buffer): EventLog {
  if (log.length === 0)
    throw new EventLogError('ERR_EVENTLOG_EMPTY', 'The event log is empty', { offset: 0 });
  const reader = new Reader(log);
  const first = readSha1Event(reader, 0);
  const specId = isSpecId03(first) ? parseSpecId(first) : undefined;
  if (specId === undefined) {
    // No "Spec ID Event03": every record is TCG_PCR_EVENT with a SHA-1 digest (TPM 1.2 style,
    // including logs that begin with "Spec ID Event00" or, as some firmware writes, StartupLocality).
    const events = [first];
    while (reader.remaining > 0) events.push(readSha1Event(reader, events.length));
    return { format: 'sha1', specId: undefined, banks: [SHA1.name], events };
  }
  const events = [first];
  while (reader.remaining > 0) events.push(readAgileEvent(reader, events.length, specId));
  return { format: 'crypto-agile', specId, banks: specId.algorithms.map((a) => a.name), events };
}

function checkPcr(pcr: number, type: number, offset: number, index: number): void {
  // EV_NO_ACTION records are never extended; firmware writes 0xFFFFFFFF into some of them.
  if (pcr < PCR_COUNT || (type === EV.NO_ACTION && pcr === NO_PCR)) return;
  throw new EventLogError(
    'ERR_EVENTLOG_MALFORMED',
    `Event ${index} at offset ${offset} names PCR ${pcr} (0x${pcr.toString(16)}); a PC Client TPM has PCRs 0-${PCR_COUNT - 1}`,
    { offset, eventIndex: index },
  );
}

function readEventData(reader: Reader, offset: number, index: number): { data: Buffer; dataOffset: number } {
  const sizeOffset = reader.absolute;
  const size = reader.u32(`event ${index}'s size`);
  if (size > MAX_EVENT_DATA) {
    throw new EventLogError(
      'ERR_EVENTLOG_TOO_LARGE',
      `Event ${index} at offset ${offset} claims ${size} bytes of data; the limit is ${MAX_EVENT_DATA}`,
      { offset: sizeOffset, eventIndex: index },
    );
  }
  const dataOffset = reader.absolute;
  return { data: reader.bytes(size, `event ${index}'s data (${size} bytes)`), dataOffset };
}

function readSha1Event(reader: Reader, index: number): LogEvent {
  const offset = reader.absolute;
  if (reader.remaining < SHA1_EVENT_HEADER) {
    throw new EventLogError(
      'ERR_EVENTLOG_TRUNCATED',
      `The log ends inside event ${index}'s header at offset ${offset}: ${reader.remaining} of ${SHA1_EVENT_HEADER} bytes`,
      { offset, eventIndex: index },
    );
  }
  const pcr = reader.u32('PCR index');
  const type = reader.u32('event type');
  checkPcr(pcr, type, offset, index);
  const digest = reader.bytes(SHA1.size, 'SHA-1 digest');
  const { data, dataOffset } = readEventData(reader, offset, index);
  return {
    index,
    offset,
    pcr,
    type,
    typeName: eventTypeName(type),
    digests: [{ algorithmId: SHA1.id, bank: SHA1.name, digest }],
    data,
    dataOffset,
  };
}

function isSpecId03(event: LogEvent): boolean {
  return (
    event.type === EV.NO_ACTION &&
    event.data.length >= SPEC_ID_HEADER &&
    event.data.subarray(0, 16).toString('latin1') === SPEC_ID_03
  );
}

function parseSpecId(event: LogEvent): SpecIdEvent {
  const r = new Reader(event.data, event.dataOffset, 0, event.data.length, 'the Spec ID event');
  const malformed = (message: string, at: number): EventLogError =>
    new EventLogError('ERR_EVENTLOG_MALFORMED', `Spec ID event: ${message}`, { offset: at, eventIndex: 0 });
  if (event.pcr !== 0) throw malformed(`it must be logged for PCR 0, not PCR ${event.pcr}`, event.offset);
  const signature = r.bytes(16, 'signature').toString('latin1').replace(/\0+$/, '');
  const platformClass = r.u32('platformClass');
  const specVersionMinor = r.u8('specVersionMinor');
  const specVersionMajor = r.u8('specVersionMajor');
  const specErrata = r.u8('specErrata');
  const uintnSize = r.u8('uintnSize');
  const countOffset = r.absolute;
  const count = r.u32('numberOfAlgorithms');
  if (count === 0) throw malformed('it lists no digest algorithms', countOffset);
  if (count > MAX_ALGORITHMS) {
    throw new EventLogError(
      'ERR_EVENTLOG_TOO_LARGE',
      `Spec ID event lists ${count} digest algorithms; the limit is ${MAX_ALGORITHMS}`,
      { offset: countOffset, eventIndex: 0 },
    );
  }
  const algorithms: SpecIdAlgorithm[] = [];
  for (let i = 0; i < count; i++) {
    const at = r.absolute;
    const id = r.u16('algorithmId');
    const digestSize = r.u16('digestSize');
    const known = hashAlgorithmById(id);
    if (known !== undefined && known.size !== digestSize) {
      throw malformed(`${known.name} is listed with digest size ${digestSize}, not ${known.size}`, at);
    }
    if (digestSize === 0) throw malformed(`algorithm 0x${id.toString(16)} has digest size 0`, at);
    if (algorithms.some((a) => a.id === id))
      throw malformed(`algorithm 0x${id.toString(16)} is listed twice`, at);
    algorithms.push({ id, name: known?.name ?? algName(id), digestSize });
  }
  const vendorInfoSize = r.u8('vendorInfoSize');
  const vendorInfo = r.bytes(vendorInfoSize, 'vendorInfo');
  if (r.remaining !== 0) throw malformed(`${r.remaining} bytes follow the vendor info`, r.absolute);
  return {
    signature,
    platformClass,
    specVersionMajor,
    specVersionMinor,
    specErrata,
    uintnSize,
    algorithms,
    vendorInfo,
  };
}

function algName(id: number): string {
  return `alg_0x${id.toString(16).padStart(4, '0')}`;
}

function readAgileEvent(reader: Reader, index: number, specId: SpecIdEvent): LogEvent {
  const offset = reader.absolute;
  const pcr = reader.u32(`event ${index}'s PCR index`);
  const type = reader.u32(`event ${index}'s type`);
  checkPcr(pcr, type, offset, index);
  const countOffset = reader.absolute;
  const count = reader.u32(`event ${index}'s digest count`);
  if (count > specId.algorithms.length) {
    // More digests than declared banks can only be garbage (each algorithm may appear once), and
    // refusing here bounds the loop below by the Spec ID, not by a number read from the log.
    throw new EventLogError(
      'ERR_EVENTLOG_TOO_LARGE',
      `Event ${index} at offset ${offset} claims ${count} digests; the Spec ID event declares ${specId.algorithms.length} algorithms`,
      { offset: countOffset, eventIndex: index },
    );
  }
  const digests: EventDigest[] = [];
  for (let i = 0; i < count; i++) {
    const at = reader.absolute;
    const id = reader.u16(`event ${index}'s digest algorithm`);
    const alg = specId.algorithms.find((a) => a.id === id);
    if (alg === undefined) {
      throw new EventLogError(
        'ERR_EVENTLOG_UNKNOWN_ALGORITHM',
        `Event ${index} at offset ${offset} has a digest of algorithm 0x${id.toString(16)}, which the Spec ID event does not declare, so its size is unknown`,
        { offset: at, eventIndex: index },
      );
    }
    if (digests.some((d) => d.algorithmId === id)) {
      throw new EventLogError('ERR_EVENTLOG_MALFORMED', `Event ${index} has two ${alg.name} digests`, {
        offset: at,
        eventIndex: index,
      });
    }
    digests.push({
      algorithmId: id,
      bank: alg.name,
      digest: reader.bytes(alg.digestSize, `${alg.name} digest`),
    });
  }
  const { data, dataOffset } = readEventData(reader, offset, index);
  return { index, offset, pcr, type, typeName: eventTypeName(type), digests, data, dataOffset };
}
