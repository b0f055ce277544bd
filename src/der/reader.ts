/**
 * A small strict DER reader, shared by the CSR reader (src/spiffe) and the EK certificate reader
 * (src/tpm/verify): both decode only the few structures they decide on, and one reader keeps their
 * idea of "well-formed DER" the same.
 *
 * Strict means DER, not BER: one-byte tags only (every tag these structures use), definite lengths
 * in their shortest form, and a value must end exactly where its container ends. Anything else is a
 * {@link DerError} naming what was wrong and where, which callers wrap in their own coded error.
 *
 * @module
 */

/** Malformed DER; the message names the offending value and, for framing faults, its offset. */
export class DerError extends Error {
  override readonly name = 'DerError';
}

/** One decoded value: its tag, its content, and its whole encoding (header included). */
export interface DerValue {
  readonly tag: number;
  readonly content: Uint8Array;
  readonly encoded: Uint8Array;
}

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

const hex = (n: number): string => n.toString(16).padStart(2, '0');

/** Reads consecutive values out of one byte range, in order. */
export class DerReader {
  readonly #bytes: Uint8Array;
  readonly #what: string;
  #offset = 0;

  /** `what` names the range in errors ("CertificationRequestInfo", "basicConstraints", …). */
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
      if (count === 0) {
        throw this.#error(
          `${name} has an unsupported length form: an indefinite length (BER, not DER)`,
          start,
        );
      }
      // Four length bytes already allow 4 GiB, far past any input accepted here.
      if (count > 4)
        throw this.#error(`${name} has an unsupported length form: a ${count}-byte length`, start);
      if (start + 2 + count > bytes.length) throw this.#error(`${name} length runs past the end`, start);
      if (bytes[start + 2] === 0) {
        throw this.#error(`${name} length has a leading zero byte: not in its shortest form`, start);
      }
      length = 0;
      for (let i = 0; i < count; i++) length = length * 256 + (bytes[start + 2 + i] ?? 0);
      if (length < 0x80) {
        throw this.#error(
          `${name} length ${length} is not in its short form (DER requires the shortest form)`,
          start,
        );
      }
      header += count;
    }
    const end = start + header + length;
    if (end > bytes.length) {
      throw this.#error(
        `${name} runs past the end of ${this.#what}: claims ${length} bytes, only ${bytes.length - start - header} remain`,
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
      const left = this.#bytes.length - this.#offset;
      throw this.#error(`${left} unexpected bytes after the last value`, this.#offset);
    }
  }

  #error(message: string, offset: number): DerError {
    return new DerError(`${this.#what}: ${message} (at byte ${offset})`);
  }
}

/** Reads `bytes` as exactly one value with `tag` (any tag when undefined). */
export function readOne(bytes: Uint8Array, tag: number | undefined, what: string): DerValue {
  const reader = new DerReader(bytes, what);
  const value = reader.read(tag, what);
  reader.end();
  return value;
}

/** A reader over the content of `value`, named `what` in errors. */
export function inside(value: DerValue, what: string): DerReader {
  return new DerReader(value.content, what);
}

/** Reads `SEQUENCE OF item` (or SET OF) from `value`; `item` reads one element. */
export function eachOf(value: DerValue, what: string, item: (reader: DerReader) => void): void {
  const reader = inside(value, what);
  while (!reader.done) item(reader);
}
