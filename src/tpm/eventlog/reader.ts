import { EventLogError } from './errors.js';

/**
 * Little-endian cursor over a slice of the log. Every read is bounds-checked against `end`, and
 * errors carry the absolute offset in the log (`base` + position), so a report points at the byte
 * that was wrong even when the reader works inside one event's data.
 */
export class Reader {
  private pos: number;

  constructor(
    private readonly buf: Buffer,
    private readonly base = 0,
    start = 0,
    private readonly end = buf.length,
    /** What is being read, for messages: "the log", "event 12's data". */
    private readonly what = 'the log',
  ) {
    this.pos = start;
  }

  get offset(): number {
    return this.pos;
  }

  /** Absolute offset in the log of the current position. */
  get absolute(): number {
    return this.base + this.pos;
  }

  get remaining(): number {
    return this.end - this.pos;
  }

  private need(n: number, field: string): void {
    if (n > this.remaining) {
      throw new EventLogError(
        'ERR_EVENTLOG_TRUNCATED',
        `${what(this.what)} ends inside ${field}: needs ${n} bytes at offset ${this.absolute}, ${this.remaining} left`,
        { offset: this.absolute },
      );
    }
  }

  u8(field: string): number {
    this.need(1, field);
    const v = this.buf.readUInt8(this.pos);
    this.pos += 1;
    return v;
  }

  u16(field: string): number {
    this.need(2, field);
    const v = this.buf.readUInt16LE(this.pos);
    this.pos += 2;
    return v;
  }

  u32(field: string): number {
    this.need(4, field);
    const v = this.buf.readUInt32LE(this.pos);
    this.pos += 4;
    return v;
  }

  u64(field: string): bigint {
    this.need(8, field);
    const v = this.buf.readBigUInt64LE(this.pos);
    this.pos += 8;
    return v;
  }

  /** A view (not a copy) of the next n bytes. */
  bytes(n: number, field: string): Buffer {
    this.need(n, field);
    const v = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    return v;
  }

  rest(): Buffer {
    return this.bytes(this.remaining, 'the rest');
  }
}

function what(s: string): string {
  return s.charAt(0).toUpperCase() + s.slice(1);
}
