import { EV } from './constants.js';
import { EventLogError } from './errors.js';
import type { LogEvent, SpecIdEvent } from './parse.js';
import { Reader } from './reader.js';

/** UEFI_VARIABLE_DATA (PC Client PFP §10.4.9 / UEFI spec): the variable's vendor GUID, name and data. */
export interface UefiVariable {
  kind: 'uefi-variable';
  guid: string;
  name: string;
  data: Buffer;
  /** For the SecureBoot variable with its one data byte: true when Secure Boot is on. */
  secureBoot?: boolean;
  /**
   * Bytes after the declared variable data. Only EV_EFI_VARIABLE_AUTHORITY may have them: shim
   * (go-attestation #157) logs its built-in certificate with lengths that do not cover the whole
   * event, as go-attestation's `sb_cert_eventlog` shows. The summary reports it as a workaround.
   */
  trailing?: Buffer;
}

export interface Separator {
  kind: 'separator';
  /**
   * The 4-byte separator value: 0 normally, 0xFFFFFFFF when firmware hit an error before this point.
   * Windows boot manager writes "WBCL" (0x4c434257) into PCRs 12-14. Undefined for other sizes.
   */
  value: number | undefined;
  error: boolean;
}

export interface ImageLoad {
  kind: 'image-load';
  location: bigint;
  length: bigint;
  linkTimeAddress: bigint;
  devicePath: Buffer;
}

export interface FirmwareBlob {
  kind: 'firmware-blob';
  /** Only in EV_EFI_PLATFORM_FIRMWARE_BLOB2. */
  description?: string;
  base: bigint;
  length: bigint;
}

export interface GptPartition {
  typeGuid: string;
  uniqueGuid: string;
  startingLba: bigint;
  endingLba: bigint;
  attributes: bigint;
  name: string;
}

export interface Gpt {
  kind: 'gpt';
  diskGuid: string;
  partitions: GptPartition[];
}

/** Text events: EV_EFI_ACTION, EV_IPL, EV_S_CRTM_VERSION, string EV_POST_CODE. */
export interface Text {
  kind: 'text';
  text: string;
  encoding: 'utf-8' | 'utf-16le';
}

/**
 * EV_IPL or EV_S_CRTM_VERSION data that is not text: edk2 logs a GUID as its CRTM version, older
 * BIOSes a binary version block, shim its MokList in PCR14.
 */
export interface Bytes {
  kind: 'bytes';
}

export interface StartupLocality {
  kind: 'startup-locality';
  locality: number;
}

export interface SpecId {
  kind: 'spec-id';
  specId: SpecIdEvent;
}

/** EV_NO_ACTION events other than Spec ID and StartupLocality (e.g. "SP800-155 Event3"). */
export interface NoAction {
  kind: 'no-action';
  signature: string;
}

/** Event types ironroot does not interpret; the data stays available on the event. */
export interface Raw {
  kind: 'raw';
}

export type DecodedEvent =
  | UefiVariable
  | Separator
  | ImageLoad
  | FirmwareBlob
  | Gpt
  | Text
  | Bytes
  | StartupLocality
  | SpecId
  | NoAction
  | Raw;

/** Caps for counts read from event data; a GPT with more partitions than this is not a disk. */
const SEPARATOR_ERROR = 0xffffffff;
const MAX_GPT_PARTITIONS = 1024;
const GPT_HEADER_SIZE = 92;
const GPT_ENTRY_NAME_BYTES = 72;
const GPT_ENTRY_FIXED = 16 + 16 + 8 + 8 + 8 + GPT_ENTRY_NAME_BYTES;

/**
 * Decode an event's data according to its type. Throws `ERR_EVENTLOG_EVENT_DATA` (with the byte
 * offset in the log) when the data does not have the structure the type promises — which a
 * verifier must treat as a lie, since event data is not covered by the digest in general.
 *
 * `specId` gives UINTN's size for image load events; without it (SHA-1 logs) 64-bit is assumed.
 */
export function decodeEvent(event: LogEvent, specId?: SpecIdEvent): DecodedEvent {
  const r = new Reader(event.data, event.dataOffset, 0, event.data.length, `event ${event.index}'s data`);
  try {
    return decodeWith(event, r, specId);
  } catch (e) {
    if (e instanceof EventLogError && e.code === 'ERR_EVENTLOG_TRUNCATED') {
      throw new EventLogError(
        'ERR_EVENTLOG_EVENT_DATA',
        `Event ${event.index} (${event.typeName}) has malformed data: ${e.message}`,
        { offset: e.offset, eventIndex: event.index, pcr: event.pcr },
      );
    }
    throw e;
  }
}

function bad(event: LogEvent, r: Reader, message: string): EventLogError {
  return new EventLogError(
    'ERR_EVENTLOG_EVENT_DATA',
    `Event ${event.index} (${event.typeName}): ${message}`,
    {
      offset: r.absolute,
      eventIndex: event.index,
      pcr: event.pcr,
    },
  );
}

function decodeWith(event: LogEvent, r: Reader, specId: SpecIdEvent | undefined): DecodedEvent {
  switch (event.type) {
    case EV.NO_ACTION:
      return decodeNoAction(event, specId);
    case EV.EFI_VARIABLE_DRIVER_CONFIG:
    case EV.EFI_VARIABLE_BOOT:
    case EV.EFI_VARIABLE_BOOT2:
    case EV.EFI_VARIABLE_AUTHORITY:
      return decodeVariable(event, r);
    case EV.SEPARATOR:
      return decodeSeparator(event);
    case EV.EFI_ACTION:
      return { kind: 'text', text: ascii(event.data), encoding: 'utf-8' };
    case EV.IPL:
    case EV.S_CRTM_VERSION:
      return decodeString(event.data);
    case EV.POST_CODE:
      // PFP §10.4.1: either a UEFI_PLATFORM_FIRMWARE_BLOB or a string such as "ACPI DATA".
      return event.data.length === 16 ? decodeBlob(r, false) : decodeString(event.data);
    case EV.EFI_PLATFORM_FIRMWARE_BLOB:
      return decodeBlob(r, false);
    case EV.EFI_PLATFORM_FIRMWARE_BLOB2:
      return decodeBlob(r, true);
    case EV.EFI_BOOT_SERVICES_APPLICATION:
    case EV.EFI_BOOT_SERVICES_DRIVER:
    case EV.EFI_RUNTIME_SERVICES_DRIVER:
      return decodeImageLoad(event, r, specId);
    case EV.EFI_GPT_EVENT:
      return decodeGpt(event, r);
    default:
      return { kind: 'raw' };
  }
}

function decodeNoAction(event: LogEvent, specId: SpecIdEvent | undefined): DecodedEvent {
  if (event.index === 0 && specId !== undefined) return { kind: 'spec-id', specId };
  const signature = event.data.subarray(0, 16).toString('latin1');
  if (signature === 'StartupLocality\0' && event.data.length === 17) {
    return { kind: 'startup-locality', locality: event.data.readUInt8(16) };
  }
  return { kind: 'no-action', signature: signature.replace(/\0.*$/s, '') };
}

function decodeVariable(event: LogEvent, r: Reader): UefiVariable {
  const guid = formatGuid(r.bytes(16, 'VariableName GUID'));
  const nameLength = toLength(r.u64('UnicodeNameLength'), event, r);
  const dataLength = toLength(r.u64('VariableDataLength'), event, r);
  const name = r.bytes(nameLength * 2, 'UnicodeName').toString('utf16le');
  const data = r.bytes(dataLength, 'VariableData');
  if (r.remaining !== 0 && event.type !== EV.EFI_VARIABLE_AUTHORITY) {
    throw bad(event, r, `${r.remaining} bytes follow the variable data`);
  }
  const variable: UefiVariable = { kind: 'uefi-variable', guid, name, data };
  if (r.remaining !== 0) variable.trailing = r.rest();
  if (event.type === EV.EFI_VARIABLE_DRIVER_CONFIG && name === 'SecureBoot' && data.length === 1) {
    variable.secureBoot = data.readUInt8(0) === 1;
  }
  return variable;
}

function toLength(value: bigint, event: LogEvent, r: Reader): number {
  if (value > BigInt(event.data.length)) throw bad(event, r, `a length of ${value} exceeds the event's data`);
  return Number(value);
}

function decodeSeparator(event: LogEvent): Separator {
  if (event.data.length !== 4) return { kind: 'separator', value: undefined, error: false };
  const value = event.data.readUInt32LE(0);
  return { kind: 'separator', value, error: value === SEPARATOR_ERROR };
}

function decodeBlob(r: Reader, withDescription: boolean): FirmwareBlob {
  const description = withDescription
    ? ascii(r.bytes(r.u8('BlobDescriptionSize'), 'BlobDescription'))
    : undefined;
  const base = r.u64('BlobBase');
  const length = r.u64('BlobLength');
  return description === undefined
    ? { kind: 'firmware-blob', base, length }
    : { kind: 'firmware-blob', description, base, length };
}

function decodeImageLoad(event: LogEvent, r: Reader, specId: SpecIdEvent | undefined): ImageLoad {
  // UEFI_IMAGE_LOAD_EVENT: address (UINT64), then three UINTN. Spec ID uintnSize 1 means 32 bits.
  const wide = specId?.uintnSize !== 1;
  const uintn = (field: string): bigint => (wide ? r.u64(field) : BigInt(r.u32(field)));
  const location = r.u64('ImageLocationInMemory');
  const length = uintn('ImageLengthInMemory');
  const linkTimeAddress = uintn('ImageLinkTimeAddress');
  const pathLength = toLength(uintn('LengthOfDevicePath'), event, r);
  const devicePath = r.bytes(pathLength, 'DevicePath');
  return { kind: 'image-load', location, length, linkTimeAddress, devicePath };
}

function decodeGpt(event: LogEvent, r: Reader): Gpt {
  const header = r.bytes(GPT_HEADER_SIZE, 'EFI_PARTITION_TABLE_HEADER');
  if (header.subarray(0, 8).toString('latin1') !== 'EFI PART')
    throw bad(event, r, 'the GPT header signature is not "EFI PART"');
  const diskGuid = formatGuid(header.subarray(56, 72));
  const entrySize = header.readUInt32LE(84);
  const count = r.u64('NumberOfPartitions');
  if (count > BigInt(MAX_GPT_PARTITIONS))
    throw bad(event, r, `${count} partitions is over the limit of ${MAX_GPT_PARTITIONS}`);
  if (entrySize < GPT_ENTRY_FIXED)
    throw bad(event, r, `partition entry size ${entrySize} is below ${GPT_ENTRY_FIXED}`);
  const partitions: GptPartition[] = [];
  for (let i = 0; i < Number(count); i++) {
    const entry = new Reader(r.bytes(entrySize, `partition entry ${i}`));
    partitions.push({
      typeGuid: formatGuid(entry.bytes(16, 'PartitionTypeGUID')),
      uniqueGuid: formatGuid(entry.bytes(16, 'UniquePartitionGUID')),
      startingLba: entry.u64('StartingLBA'),
      endingLba: entry.u64('EndingLBA'),
      attributes: entry.u64('Attributes'),
      name: entry.bytes(GPT_ENTRY_NAME_BYTES, 'PartitionName').toString('utf16le').replace(/\0.*$/s, ''),
    });
  }
  return { kind: 'gpt', diskGuid, partitions };
}

/** EFI_GUID: the first three fields little-endian, the last eight bytes as they are. */
export function formatGuid(b: Buffer): string {
  const hex = (buf: Buffer): string => buf.toString('hex');
  const le = (buf: Buffer): string => hex(Buffer.from(buf).reverse());
  return `${le(b.subarray(0, 4))}-${le(b.subarray(4, 6))}-${le(b.subarray(6, 8))}-${hex(b.subarray(8, 10))}-${hex(b.subarray(10, 16))}`;
}

function ascii(data: Buffer): string {
  return data.toString('latin1').replace(/\0+$/, '');
}

/**
 * EV_IPL and EV_S_CRTM_VERSION carry either an 8-bit string (grub, most BIOSes), UCS-2 (edk2's
 * CRTM version, systemd-boot's command line) or binary data. A NUL in the second byte after a
 * non-NUL first byte marks UCS-2: no useful 8-bit string has a NUL there. Anything with control
 * characters other than tab and newlines, or invalid UTF-8, is kept as bytes.
 */
function decodeString(data: Buffer): Text | Bytes {
  const utf16 = data.length >= 2 && data.length % 2 === 0 && data[0] !== 0 && data[1] === 0;
  const text = (utf16 ? data.toString('utf16le') : data.toString('utf8')).replace(/\0+$/, '');
  // biome-ignore lint/suspicious/noControlCharactersInRegex: control characters are what it detects
  if (text.length === 0 || /[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f\ufffd]/.test(text))
    return { kind: 'bytes' };
  return { kind: 'text', text, encoding: utf16 ? 'utf-16le' : 'utf-8' };
}
