/**
 * The primitive values the readers decide on, each checked as DER: OBJECT IDENTIFIER as text,
 * BOOLEAN, small INTEGER, BIT STRING.
 *
 * @module
 */
import { DerError, type DerReader, type DerValue, TAG } from './reader.js';

/** A DER OBJECT IDENTIFIER's content as dotted text; every arc in its shortest form. */
export function oidText(content: Uint8Array, what: string): string {
  if (content.length === 0) throw new DerError(`${what}: empty OBJECT IDENTIFIER`);
  const arcs: number[] = [];
  let arc = 0;
  let fresh = true;
  for (const byte of content) {
    // A leading 0x80 would pad an arc with a zero digit: not the shortest form DER requires.
    if (fresh && byte === 0x80) {
      throw new DerError(`${what}: OBJECT IDENTIFIER arc is not minimal (a leading 0x80)`);
    }
    arc = arc * 128 + (byte & 0x7f);
    if (arc > Number.MAX_SAFE_INTEGER / 128) throw new DerError(`${what}: OBJECT IDENTIFIER arc too large`);
    fresh = (byte & 0x80) === 0;
    if (fresh) {
      arcs.push(arc);
      arc = 0;
    }
  }
  if (!fresh) throw new DerError(`${what}: OBJECT IDENTIFIER ends inside an arc`);
  const [head = 0, ...rest] = arcs;
  const top = head < 40 ? 0 : head < 80 ? 1 : 2;
  return [top, head - top * 40, ...rest].join('.');
}

/** Reads an OBJECT IDENTIFIER, dotted; `what` names it in errors. */
export function readOid(reader: DerReader, what: string): string {
  return oidText(reader.read(TAG.OID, what).content, what);
}

/** Checks a BOOLEAN's content: exactly one byte, 0x00 or 0xff. */
export function checkBoolean(content: Uint8Array, what: string): void {
  if (content.length !== 1 || (content[0] !== 0x00 && content[0] !== 0xff)) {
    throw new DerError(`${what}: BOOLEAN is not DER (not one byte of 00 or FF)`);
  }
}

/** A DER BOOLEAN's value. */
export function booleanValue(value: DerValue, what: string): boolean {
  checkBoolean(value.content, what);
  return value.content[0] === 0xff;
}

/** Checks an INTEGER's content: not empty, and no redundant leading 00 or FF byte. */
export function checkInteger(content: Uint8Array, what: string): void {
  const [first, second = 0] = content;
  if (first === undefined) throw new DerError(`${what}: empty INTEGER`);
  if (content.length > 1 && ((first === 0x00 && second < 0x80) || (first === 0xff && second >= 0x80))) {
    throw new DerError(`${what}: INTEGER is not in its shortest form`);
  }
}

/** A non-negative DER INTEGER small enough for a number (versions, path and salt lengths). */
export function smallUnsigned(value: DerValue, what: string): number {
  const content = value.content;
  checkInteger(content, what);
  if ((content[0] ?? 0) & 0x80) throw new DerError(`${what}: negative INTEGER`);
  if (content.length > 6) throw new DerError(`${what}: INTEGER too large`);
  let n = 0;
  for (const byte of content) n = n * 256 + byte;
  return n;
}

/** Checks a BIT STRING's content: an unused-bits count 0..7, and 0 when there are no bits. */
export function checkBitString(content: Uint8Array, what: string): void {
  const unused = content[0];
  if (unused === undefined || unused > 7 || (unused > 0 && content.length === 1)) {
    throw new DerError(`${what}: BIT STRING has an invalid unused-bits count`);
  }
}

/** A BIT STRING's bytes, which must have no unused bits (keys and signatures are whole bytes). */
export function bitStringBytes(value: DerValue, what: string): Uint8Array {
  checkBitString(value.content, what);
  const unused = value.content[0];
  if (unused !== 0) throw new DerError(`${what}: BIT STRING has ${unused} unused bits, expected 0`);
  return value.content.subarray(1);
}
