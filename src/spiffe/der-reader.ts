/**
 * A small strict DER reader for the few structures this library decodes on hot paths (CSRs).
 *
 * Strict means DER, not BER: one-byte tags only (every tag these structures use), definite lengths
 * in their shortest form, and a value must end exactly where its container ends. Anything else is a
 * {@link DerError} naming what was wrong and where, which callers wrap in their own coded error.
 *
 * @module
 */

/** Malformed DER; the message names the offending value and its offset. */
export class DerError extends Error {
  override readonly name = 'DerError';
}

/** One decoded value: its tag, its content, and its whole encoding (header included). */
export interface DerValue {
  readonly tag: number;
  readonly content: Uint8Array;
  readonly encoded: Uint8Array;
}

/** Reads consecutive values out of one byte range, in order. */
export class DerReader {
  readonly #bytes: Uint8Array;
  readonly #what: string;
  #offset = 0;

  /** `what` names the range in errors ("CertificationRequestInfo", …). */
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
    if (found === undefined) throw this.#error(`${name} missing`, start);
    if (tag !== undefined && found !== tag) {
      throw this.#error(`${name} has tag 0x${hex(found)}, expected 0x${hex(tag)}`, start);
    }
    // High-tag-number form (low five bits all set) is used by none of the structures read here.
    if ((found & 0x1f) === 0x1f) throw this.#error(`${name} uses a multi-byte tag`, start);
    const first = bytes[start + 1];
    if (first === undefined) throw this.#error(`${name} has no length`, start);
    let length = first;
    let header = 2;
    if (first & 0x80) {
      const count = first & 0x7f;
      if (count === 0) throw this.#error(`${name} has an indefinite length (BER, not DER)`, start);
      // Four length bytes already allow 4 GiB, far past any input accepted here.
      if (count > 4) throw this.#error(`${name} has a ${count}-byte length`, start);
      length = 0;
      for (let i = 0; i < count; i++) {
        const b = bytes[start + 2 + i];
        if (b === undefined) throw this.#error(`${name} length is cut short`, start);
        if (i === 0 && b === 0) throw this.#error(`${name} length has a leading zero byte`, start);
        length = length * 256 + b;
      }
      if (length < 0x80) throw this.#error(`${name} length ${length} is not in its short form`, start);
      header += count;
    }
    const end = start + header + length;
    if (end > bytes.length) {
      throw this.#error(
        `${name} claims ${length} bytes, only ${bytes.length - start - header} remain`,
        start,
      );
    }
    this.#offset = end;
    return { tag: found, content: bytes.subarray(start + header, end), encoded: bytes.subarray(start, end) };
  }

  /** Reads the next value if it carries `tag`; undefined (nothing read) otherwise. */
  optional(tag: number, name?: string): DerValue | undefined {
    return this.peekTag() === tag ? this.read(tag, name) : undefined;
  }

  /** Asserts that nothing follows the last value read. */
  end(): void {
    if (!this.done) {
      throw this.#error(
        `${this.#bytes.length - this.#offset} unexpected bytes after the last value`,
        this.#offset,
      );
    }
  }

  #error(message: string, offset: number): DerError {
    return new DerError(`${this.#what}: ${message} (at byte ${offset})`);
  }
}

const hex = (n: number): string => n.toString(16).padStart(2, '0');

/** Universal tags used by the readers. */
export const TAG = {
  BOOLEAN: 0x01,
  INTEGER: 0x02,
  BIT_STRING: 0x03,
  OCTET_STRING: 0x04,
  NULL: 0x05,
  OID: 0x06,
  SEQUENCE: 0x30,
  SET: 0x31,
} as const;

/** Reads `bytes` as exactly one value with `tag`. */
export function readOne(bytes: Uint8Array, tag: number, what: string): DerValue {
  const reader = new DerReader(bytes, what);
  const value = reader.read(tag, what);
  reader.end();
  return value;
}

/** A DER OBJECT IDENTIFIER's content as dotted text. */
export function oidText(content: Uint8Array, what: string): string {
  if (content.length === 0) throw new DerError(`${what}: empty OBJECT IDENTIFIER`);
  const arcs: number[] = [];
  let value = 0;
  for (let i = 0; i < content.length; i++) {
    const b = content[i] ?? 0;
    // A leading 0x80 would pad an arc with a zero digit: not the shortest form DER requires.
    if (value === 0 && b === 0x80) throw new DerError(`${what}: OBJECT IDENTIFIER arc is not minimal`);
    value = value * 128 + (b & 0x7f);
    if (value > Number.MAX_SAFE_INTEGER / 128) throw new DerError(`${what}: OBJECT IDENTIFIER arc too large`);
    if ((b & 0x80) === 0) {
      arcs.push(value);
      value = 0;
    } else if (i === content.length - 1) {
      throw new DerError(`${what}: OBJECT IDENTIFIER ends inside an arc`);
    }
  }
  const [head = 0, ...rest] = arcs;
  const top = head < 40 ? 0 : head < 80 ? 1 : 2;
  return [top, head - top * 40, ...rest].join('.');
}

/** A BIT STRING's bytes, which must have no unused bits (keys and signatures are whole bytes). */
export function bitStringBytes(content: Uint8Array, what: string): Uint8Array {
  if (content.length === 0) throw new DerError(`${what}: BIT STRING has no unused-bits byte`);
  if (content[0] !== 0) throw new DerError(`${what}: BIT STRING has ${content[0]} unused bits, expected 0`);
  return content.subarray(1);
}

/** A DER INTEGER's value when it fits a safe JavaScript number and is not negative. */
export function smallInteger(content: Uint8Array, what: string): number {
  if (content.length === 0) throw new DerError(`${what}: empty INTEGER`);
  if (content.length > 1 && content[0] === 0 && ((content[1] ?? 0) & 0x80) === 0) {
    throw new DerError(`${what}: INTEGER has a redundant leading zero byte`);
  }
  if ((content[0] ?? 0) & 0x80) throw new DerError(`${what}: negative INTEGER`);
  if (content.length > 6) throw new DerError(`${what}: INTEGER too large`);
  let value = 0;
  for (const b of content) value = value * 256 + b;
  return value;
}

/** Deeper than any structure read here; bounds the recursion of {@link checkDerTree}. */
const MAX_DEPTH = 32;

/**
 * Checks that `bytes` is a sequence of well-formed DER values, descending into every constructed
 * one: no end-of-contents or constructed string values, SEQUENCE and SET constructed, and the
 * universal BOOLEAN, INTEGER, BIT STRING, NULL and OBJECT IDENTIFIER values well formed. A request
 * is judged whole before its signature, as @peculiar/x509 (asn1js) judged it, so that a malformed
 * value deep inside is a parse error rather than a bad signature.
 *
 * @throws DerError naming the first malformed value.
 */
export function checkDerTree(bytes: Uint8Array, what: string, depth = 0): void {
  if (depth > MAX_DEPTH) throw new DerError(`${what}: values nested more than ${MAX_DEPTH} deep`);
  const reader = new DerReader(bytes, what);
  while (!reader.done) {
    const { tag, content } = reader.read();
    const universal = (tag & 0xc0) === 0;
    if (tag & 0x20) {
      if (universal && tag !== TAG.SEQUENCE && tag !== TAG.SET) {
        throw new DerError(`${what}: constructed universal value with tag 0x${tag.toString(16)} (not DER)`);
      }
      checkDerTree(content, what, depth + 1);
    } else if (universal) {
      checkUniversal(tag, content, what);
    }
  }
}

function checkUniversal(tag: number, content: Uint8Array, what: string): void {
  switch (tag) {
    case 0x00:
      throw new DerError(`${what}: end-of-contents marker (BER, not DER)`);
    case TAG.BOOLEAN:
      if (content.length !== 1 || (content[0] !== 0 && content[0] !== 0xff)) {
        throw new DerError(`${what}: BOOLEAN is not one byte of 00 or FF`);
      }
      return;
    case TAG.INTEGER:
      if (content.length === 0) throw new DerError(`${what}: empty INTEGER`);
      if (
        content.length > 1 &&
        ((content[0] === 0 && ((content[1] ?? 0) & 0x80) === 0) ||
          (content[0] === 0xff && ((content[1] ?? 0) & 0x80) !== 0))
      ) {
        throw new DerError(`${what}: INTEGER is not in its shortest form`);
      }
      return;
    case TAG.BIT_STRING:
      if (content.length === 0 || (content[0] ?? 0) > 7 || (content.length === 1 && content[0] !== 0)) {
        throw new DerError(`${what}: BIT STRING has a bad unused-bits count`);
      }
      return;
    case TAG.NULL:
      if (content.length !== 0) throw new DerError(`${what}: NULL with content`);
      return;
    case TAG.OID:
      oidText(content, what);
      return;
    case TAG.SEQUENCE & 0x1f:
    case TAG.SET & 0x1f:
      throw new DerError(`${what}: SEQUENCE or SET not in constructed form`);
  }
}
