/**
 * A small strict DER reader for the parts of EK and EK CA certificates the verifier decides on (see
 * ek-extensions.ts). src/tpm imports nothing of ours, so this is its own reader.
 *
 * Strict means DER, not BER: one-byte tags only (every tag these structures use), definite lengths
 * in their shortest form, and a value must end exactly where its container ends. Anything else is a
 * {@link DerError} naming what was wrong and where; callers wrap it in their coded error.
 *
 * @module
 */

/** Malformed DER; the message names the offending value and its offset. */
export class DerError extends Error {
  override readonly name = 'DerError';
}

export const TAG = {
  BOOLEAN: 0x01,
  INTEGER: 0x02,
  BIT_STRING: 0x03,
  OCTET_STRING: 0x04,
  OBJECT_IDENTIFIER: 0x06,
  SEQUENCE: 0x30,
  SET: 0x31,
} as const;

/** One decoded value: its tag, its content, and its whole encoding (header included). */
export interface DerValue {
  readonly tag: number;
  readonly content: Uint8Array;
  readonly encoded: Uint8Array;
}

function hex(byte: number): string {
  return byte.toString(16).padStart(2, '0');
}

/** Reads consecutive values out of one byte range, in order. */
export class DerReader {
  readonly #bytes: Uint8Array;
  readonly #what: string;
  #offset = 0;

  /** `what` names the range in errors ("basicConstraints", …). */
  constructor(bytes: Uint8Array, what: string) {
    this.#bytes = bytes;
    this.#what = what;
  }

  /** True when every byte has been read. */
  get done(): boolean {
    return this.#offset >= this.#bytes.length;
  }

  /** The tag of the next value, or undefined at the end. */
  peekTag(): number | undefined {
    return this.#bytes[this.#offset];
  }

  /** Reads the next value, which must carry `tag` (any tag when omitted). */
  read(tag?: number, name = 'value'): DerValue {
    const bytes = this.#bytes;
    const start = this.#offset;
    const found = bytes[start];
    if (found === undefined) throw this.error(`${name} missing`, start);
    if (tag !== undefined && found !== tag)
      throw this.error(`${name} has tag 0x${hex(found)}, expected 0x${hex(tag)}`, start);
    if ((found & 0x1f) === 0x1f) throw this.error(`${name} uses a multi-byte tag`, start);
    const first = bytes[start + 1];
    if (first === undefined) throw this.error(`${name} has no length`, start);
    let length = first;
    let header = 2;
    if (first & 0x80) {
      const count = first & 0x7f;
      // Indefinite (0x80) is BER only; four length bytes already exceed any certificate.
      if (count === 0 || count > 4) throw this.error(`${name} has an unsupported length form`, start);
      if (start + 2 + count > bytes.length) throw this.error(`${name} length runs past the end`, start);
      length = 0;
      for (let i = 0; i < count; i++) length = length * 256 + (bytes[start + 2 + i] ?? 0);
      // DER: the shortest form, so no leading zero byte and no long form below 128.
      if (bytes[start + 2] === 0 || length < 0x80)
        throw this.error(`${name} length is not in its shortest form`, start);
      header += count;
    }
    const end = start + header + length;
    if (end > bytes.length) throw this.error(`${name} runs past the end of ${this.#what}`, start);
    this.#offset = end;
    return {
      tag: found,
      content: bytes.subarray(start + header, end),
      encoded: bytes.subarray(start, end),
    };
  }

  /** Reads the next value only when it carries `tag`. */
  optional(tag: number, name?: string): DerValue | undefined {
    return this.peekTag() === tag ? this.read(tag, name) : undefined;
  }

  /** Requires every byte to have been read. */
  end(): void {
    if (!this.done) throw this.error('unexpected data after the last value', this.#offset);
  }

  error(message: string, at = this.#offset): DerError {
    return new DerError(`${this.#what}: ${message} (offset ${at})`);
  }
}

/** A reader over the content of `value`, named `what` in errors. */
export function inside(value: DerValue, what: string): DerReader {
  return new DerReader(value.content, what);
}

/** The one value `bytes` hold, which must carry `tag` (any tag when undefined) and fill them exactly. */
export function single(bytes: Uint8Array, tag: number | undefined, what: string): DerValue {
  const reader = new DerReader(bytes, what);
  const value = reader.read(tag, what);
  reader.end();
  return value;
}

/** The dotted form of an OBJECT IDENTIFIER's content, which must be DER (no padded arcs). */
export function oidText(content: Uint8Array, what: string): string {
  if (content.length === 0) throw new DerError(`${what}: empty OBJECT IDENTIFIER`);
  const arcs: number[] = [];
  let arc = 0;
  let fresh = true;
  for (const byte of content) {
    if (fresh && byte === 0x80) throw new DerError(`${what}: OBJECT IDENTIFIER arc with a leading 0x80`);
    arc = arc * 128 + (byte & 0x7f);
    if (arc > Number.MAX_SAFE_INTEGER / 128) throw new DerError(`${what}: OBJECT IDENTIFIER arc too large`);
    fresh = (byte & 0x80) === 0;
    if (fresh) {
      arcs.push(arc);
      arc = 0;
    }
  }
  if (!fresh) throw new DerError(`${what}: OBJECT IDENTIFIER ends inside an arc`);
  const first = arcs[0] ?? 0;
  const top = first < 40 ? 0 : first < 80 ? 1 : 2;
  return [top, first - top * 40, ...arcs.slice(1)].join('.');
}

/** A DER BOOLEAN's value: exactly one byte, 0x00 or 0xff. */
export function booleanValue(value: DerValue, what: string): boolean {
  const [byte] = value.content;
  if (value.content.length !== 1 || (byte !== 0x00 && byte !== 0xff))
    throw new DerError(`${what}: BOOLEAN is not DER (one byte, 00 or ff)`);
  return byte === 0xff;
}

/** A non-negative DER INTEGER small enough for a number (path lengths, versions). */
export function smallUnsigned(value: DerValue, what: string): number {
  const c = value.content;
  const [first, second] = c;
  if (first === undefined) throw new DerError(`${what}: empty INTEGER`);
  if (c.length > 1 && ((first === 0x00 && (second ?? 0) < 0x80) || (first === 0xff && (second ?? 0) >= 0x80)))
    throw new DerError(`${what}: INTEGER is not in its shortest form`);
  if (first & 0x80) throw new DerError(`${what}: negative INTEGER`);
  if (c.length > 6) throw new DerError(`${what}: INTEGER too large`);
  let n = 0;
  for (const byte of c) n = n * 256 + byte;
  return n;
}

/** Checks a BIT STRING's content: an unused-bits count 0..7, and 0 when there are no bits. */
export function checkBitString(value: DerValue, what: string): void {
  const unused = value.content[0];
  if (unused === undefined || unused > 7 || (unused > 0 && value.content.length === 1))
    throw new DerError(`${what}: BIT STRING has an invalid unused-bits count`);
}

/** Reads an OBJECT IDENTIFIER, dotted; `what` names it in errors. */
export function readOid(reader: DerReader, what: string): string {
  return oidText(reader.read(TAG.OBJECT_IDENTIFIER, what).content, what);
}

/** Reads `SEQUENCE OF item` (or SET OF) from `value`; `item` reads one element. */
export function eachOf(value: DerValue, what: string, item: (reader: DerReader) => void): void {
  const reader = inside(value, what);
  while (!reader.done) item(reader);
}
