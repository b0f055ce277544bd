/**
 * The strict DER reader that the CSR reader (src/spiffe) and the EK certificate reader (src/tpm)
 * share: framing, the primitive values, and the whole-tree check. What each caller makes of a
 * refusal is tested with the caller (test/spiffe/csr-reader.test.ts, test/tpm/verify/).
 */
import { describe, expect, it } from 'vitest';
import {
  bitStringBytes,
  booleanValue,
  checkBitString,
  checkDerTree,
  DerError,
  DerReader,
  eachOf,
  oidText,
  readOid,
  readOne,
  smallUnsigned,
  TAG,
} from '../../src/der/index.js';

const hex = (b: Uint8Array) => Buffer.from(b).toString('hex');
const value = (tag: number, ...content: number[]) =>
  readOne(Uint8Array.of(tag, content.length, ...content), tag, 'v');

describe('DerReader', () => {
  const refuses = (bytes: number[], rule: RegExp) =>
    expect(() => readOne(Uint8Array.from(bytes), 0x30, 'x')).toThrow(rule);

  it('reads DER and refuses BER lengths, cut values, multi-byte tags and trailing bytes', () => {
    expect(hex(readOne(Uint8Array.of(0x30, 0x01, 0x05), 0x30, 'x').content)).toBe('05');
    expect(
      readOne(Uint8Array.from([0x30, 0x81, 0x80, ...new Array(128).fill(0)]), 0x30, 'x').content,
    ).toHaveLength(128);
    refuses([0x30, 0x80, 0x00, 0x00], /indefinite length/);
    refuses([0x30, 0x81, 0x05, 1, 2, 3, 4, 5], /length 5 is not in its short form/);
    refuses([0x30, 0x82, 0x00, 0x80], /leading zero byte/);
    refuses([0x30, 0x85, 1, 1, 1, 1, 1], /5-byte length/);
    refuses([0x30, 0x03, 0x01], /claims 3 bytes, only 1 remain/);
    refuses([0x30], /has no length/);
    refuses([0x31, 0x00], /tag 0x31, expected 0x30/);
    refuses([0x30, 0x00, 0x00], /1 unexpected bytes/);
    expect(() => new DerReader(Uint8Array.of(0x3f, 0x01, 0x00), 'x').read()).toThrow(/multi-byte tag/);
    expect(() => new DerReader(new Uint8Array(), 'x').read(0x30, 'subject')).toThrow(DerError);
  });

  it('reads OIDs in their shortest form only', () => {
    expect(oidText(Uint8Array.of(0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01), 'x')).toBe('1.2.840.10045.2.1');
    expect(oidText(Uint8Array.of(0x88, 0x37), 'x')).toBe('2.999');
    expect(() => oidText(Uint8Array.of(0x2a, 0x80, 0x01), 'x')).toThrow(/not minimal/);
    expect(() => oidText(Uint8Array.of(0x2a, 0x86), 'x')).toThrow(/ends inside an arc/);
    expect(() => oidText(new Uint8Array(), 'x')).toThrow(/empty/);
  });
});
describe('DerReader: one message for each fault, naming the value, the range and the offset', () => {
  it('names both what was wrong and the DER rule it breaks', () => {
    const at = (bytes: number[]) => () => readOne(Uint8Array.from(bytes), 0x30, 'basicConstraints');
    expect(at([0x30, 0x80, 0x00, 0x00])).toThrow(/unsupported length form: an indefinite length/);
    expect(at([0x30, 0x81, 0x01, 0x00])).toThrow(/length 1 is not in its short form .*shortest form/);
    expect(at([0x30, 0x82, 0x00, 0x80])).toThrow(/leading zero byte: not in its shortest form/);
    expect(at([0x30, 0x82, 0x01])).toThrow(/length runs past the end/);
    expect(at([0x30, 0x00, 0x01, 0x02])).toThrow(
      'basicConstraints: 2 unexpected bytes after the last value (at byte 2)',
    );
    expect(at([0x30, 0x05, 0x00])).toThrow(
      'basicConstraints: basicConstraints runs past the end of basicConstraints: claims 5 bytes, only 1 remain (at byte 0)',
    );
  });

  it('reads optional values and SEQUENCE OF, and names a missing one', () => {
    const reader = new DerReader(Uint8Array.of(0x01, 0x01, 0xff, 0x02, 0x01, 0x03), 'fields');
    expect(reader.optional(TAG.INTEGER, 'pathLen')).toBeUndefined();
    expect(booleanValue(reader.read(TAG.BOOLEAN, 'cA'), 'cA')).toBe(true);
    expect(reader.peekTag()).toBe(TAG.INTEGER);
    expect(smallUnsigned(reader.read(TAG.INTEGER, 'pathLen'), 'pathLen')).toBe(3);
    expect(reader.done).toBe(true);
    expect(() => reader.read(TAG.INTEGER, 'serial')).toThrow('fields: serial missing (at byte 6)');
    const oids: string[] = [];
    eachOf(value(TAG.SEQUENCE, 0x06, 0x01, 0x2a, 0x06, 0x02, 0x88, 0x37), 'usages', (r) =>
      oids.push(readOid(r, 'usage')),
    );
    expect(oids).toEqual(['1.2', '2.999']);
  });
});

describe('primitive values', () => {
  it('OIDs: a padded arc is named as not minimal, by its leading 0x80', () => {
    expect(() => oidText(Uint8Array.of(0x2a, 0x80, 0x01), 'x')).toThrow(
      'x: OBJECT IDENTIFIER arc is not minimal (a leading 0x80)',
    );
  });

  it('BOOLEAN: one byte, 00 or FF', () => {
    expect(booleanValue(value(TAG.BOOLEAN, 0x00), 'b')).toBe(false);
    expect(booleanValue(value(TAG.BOOLEAN, 0xff), 'b')).toBe(true);
    for (const bad of [value(TAG.BOOLEAN, 0x01), value(TAG.BOOLEAN), value(TAG.BOOLEAN, 0xff, 0xff)]) {
      expect(() => booleanValue(bad, 'cA')).toThrow(/^cA: BOOLEAN is not DER \(not one byte of 00 or FF\)$/);
    }
  });

  it('INTEGER: small, non-negative and in its shortest form', () => {
    expect(smallUnsigned(value(TAG.INTEGER, 0x00, 0x80), 'n')).toBe(128);
    expect(smallUnsigned(value(TAG.INTEGER, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00), 'n')).toBe(2 ** 40);
    expect(() => smallUnsigned(value(TAG.INTEGER), 'n')).toThrow(/empty INTEGER/);
    expect(() => smallUnsigned(value(TAG.INTEGER, 0x00, 0x7f), 'n')).toThrow(/not in its shortest form/);
    expect(() => smallUnsigned(value(TAG.INTEGER, 0xff, 0x80), 'n')).toThrow(/not in its shortest form/);
    expect(() => smallUnsigned(value(TAG.INTEGER, 0x80), 'n')).toThrow(/negative INTEGER/);
    expect(() => smallUnsigned(value(TAG.INTEGER, 1, 0, 0, 0, 0, 0, 0), 'n')).toThrow(/INTEGER too large/);
  });

  it('BIT STRING: 0 to 7 unused bits, none without bits; whole bytes where keys and signatures are read', () => {
    expect(() => checkBitString(Uint8Array.of(0x07, 0x80), 'keyUsage')).not.toThrow();
    expect(() => checkBitString(Uint8Array.of(0x00), 'keyUsage')).not.toThrow();
    for (const bad of [[], [0x08, 0x02], [0x01]]) {
      expect(() => checkBitString(Uint8Array.from(bad), 'keyUsage')).toThrow(/invalid unused-bits count/);
    }
    expect(hex(bitStringBytes(value(TAG.BIT_STRING, 0x00, 0xab), 'key'))).toBe('ab');
    expect(() => bitStringBytes(value(TAG.BIT_STRING, 0x01, 0xab), 'key')).toThrow(
      'key: BIT STRING has 1 unused bits, expected 0',
    );
  });
});

describe('checkDerTree', () => {
  const tree =
    (...bytes: number[]) =>
    () =>
      checkDerTree(Uint8Array.from(bytes), 'request');

  it('accepts well-formed DER at any depth and refuses a malformed value deep inside', () => {
    expect(tree(0x30, 0x09, 0x31, 0x07, 0x30, 0x05, 0x01, 0x01, 0xff, 0x05, 0x00)).not.toThrow();
    expect(tree(0x30, 0x07, 0x31, 0x05, 0x30, 0x03, 0x01, 0x01, 0x01)).toThrow(
      /BOOLEAN is not DER \(not one byte of 00 or FF\)/,
    );
    expect(tree(0x30, 0x04, 0x02, 0x02, 0x00, 0x01)).toThrow(/INTEGER is not in its shortest form/);
    expect(tree(0x30, 0x03, 0x03, 0x01, 0x01)).toThrow(/invalid unused-bits count/);
    expect(tree(0x30, 0x03, 0x06, 0x01, 0x86)).toThrow(/OBJECT IDENTIFIER ends inside an arc/);
    expect(tree(0x30, 0x03, 0x05, 0x01, 0x00)).toThrow(/NULL with content/);
  });

  it('refuses BER forms: end-of-contents, constructed strings, primitive SEQUENCE, excessive nesting', () => {
    expect(tree(0x00, 0x00)).toThrow(/end-of-contents marker/);
    expect(tree(0x24, 0x03, 0x04, 0x01, 0x00)).toThrow(/constructed universal value with tag 0x24/);
    expect(tree(0x10, 0x00)).toThrow(/SEQUENCE or SET not in constructed form/);
    let nested: number[] = [];
    for (let i = 0; i < 40; i++) nested = [0x30, nested.length, ...nested];
    expect(() => checkDerTree(Uint8Array.from(nested), 'deep')).toThrow(DerError);
    expect(() => checkDerTree(Uint8Array.from(nested), 'deep')).toThrow(/nested more than 32 deep/);
  });
});
