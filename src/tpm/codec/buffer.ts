/**
 * Big-endian reader and writer for TPM 2.0 wire structures (TPM 2.0 Part 1 §A: all integers are
 * big-endian, `TPM2B_*` is a u16 size followed by that many bytes, lists are a u32 count).
 *
 * @module
 */
import { TpmError } from '../errors.js';

/** Reads TPM structures from a byte array; every read checks bounds and names what was short. */
export class TpmReader {
  readonly #bytes: Uint8Array;
  readonly #view: DataView;
  #offset = 0;

  constructor(bytes: Uint8Array) {
    this.#bytes = bytes;
    this.#view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }

  get offset(): number {
    return this.#offset;
  }

  get remaining(): number {
    return this.#bytes.byteLength - this.#offset;
  }

  #need(n: number, what: string): number {
    if (n > this.remaining) {
      throw new TpmError(
        'ERR_TPM_MALFORMED',
        `${what}: needs ${n} bytes at offset ${this.#offset}, only ${this.remaining} left`,
      );
    }
    const at = this.#offset;
    this.#offset += n;
    return at;
  }

  u8(what = 'u8'): number {
    return this.#view.getUint8(this.#need(1, what));
  }

  u16(what = 'u16'): number {
    return this.#view.getUint16(this.#need(2, what));
  }

  u32(what = 'u32'): number {
    return this.#view.getUint32(this.#need(4, what));
  }

  u64(what = 'u64'): bigint {
    return this.#view.getBigUint64(this.#need(8, what));
  }

  /** `n` raw bytes, copied so the result does not alias the input buffer. */
  bytes(n: number, what = 'bytes'): Uint8Array {
    const at = this.#need(n, what);
    return this.#bytes.slice(at, at + n);
  }

  /** A TPM2B: u16 size, then the bytes. `maxSize` bounds it where Part 2 does. */
  tpm2b(what = 'TPM2B', maxSize = 0xffff): Uint8Array {
    const size = this.u16(`${what}.size`);
    if (size > maxSize) {
      throw new TpmError('ERR_TPM_MALFORMED', `${what}: size ${size} exceeds the maximum ${maxSize}`);
    }
    return this.bytes(size, what);
  }

  /** Reads a TPM2B and hands its contents to `parse`, which must consume all of them. */
  sized<T>(what: string, parse: (inner: TpmReader) => T): T {
    const inner = new TpmReader(this.tpm2b(what));
    const value = parse(inner);
    inner.end(what);
    return value;
  }

  /** Throws unless every byte was consumed; trailing bytes mean the structure was misread. */
  end(what: string): void {
    if (this.remaining !== 0) {
      throw new TpmError('ERR_TPM_MALFORMED', `${what}: ${this.remaining} unexpected trailing bytes`);
    }
  }
}

/** Builds TPM structures; `finish()` returns one contiguous byte array. */
export class TpmWriter {
  #chunks: Uint8Array[] = [];
  #length = 0;

  get length(): number {
    return this.#length;
  }

  #push(chunk: Uint8Array): this {
    this.#chunks.push(chunk);
    this.#length += chunk.byteLength;
    return this;
  }

  u8(value: number): this {
    checkRange(value, 0xff, 'u8');
    return this.#push(Uint8Array.of(value));
  }

  u16(value: number): this {
    checkRange(value, 0xffff, 'u16');
    const b = new Uint8Array(2);
    new DataView(b.buffer).setUint16(0, value);
    return this.#push(b);
  }

  u32(value: number): this {
    checkRange(value, 0xffffffff, 'u32');
    const b = new Uint8Array(4);
    new DataView(b.buffer).setUint32(0, value);
    return this.#push(b);
  }

  u64(value: bigint): this {
    if (value < 0n || value > 0xffffffffffffffffn) throw new RangeError(`u64 out of range: ${value}`);
    const b = new Uint8Array(8);
    new DataView(b.buffer).setBigUint64(0, value);
    return this.#push(b);
  }

  bytes(value: Uint8Array): this {
    return this.#push(Uint8Array.from(value));
  }

  tpm2b(value: Uint8Array): this {
    this.u16(value.byteLength);
    return this.bytes(value);
  }

  /** Writes `build`'s output as a TPM2B (its size prefix computed afterwards). */
  sized(build: (inner: TpmWriter) => void): this {
    const inner = new TpmWriter();
    build(inner);
    return this.tpm2b(inner.finish());
  }

  /** Writes `build`'s output preceded by its u32 length (the command authorization area). */
  sized32(build: (inner: TpmWriter) => void): this {
    const inner = new TpmWriter();
    build(inner);
    this.u32(inner.length);
    return this.bytes(inner.finish());
  }

  finish(): Uint8Array {
    const out = new Uint8Array(this.#length);
    let at = 0;
    for (const chunk of this.#chunks) {
      out.set(chunk, at);
      at += chunk.byteLength;
    }
    return out;
  }
}

function checkRange(value: number, max: number, what: string): void {
  if (!Number.isInteger(value) || value < 0 || value > max) {
    throw new RangeError(`${what} out of range: ${value}`);
  }
}
