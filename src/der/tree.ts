/**
 * A whole-tree check: every value of an encoding well-formed DER, however deep.
 *
 * @module
 */
import { DerError, DerReader, TAG } from './reader.js';
import { checkBitString, checkBoolean, checkInteger, oidText } from './values.js';

/** Deeper than any structure read here; bounds the recursion of {@link checkDerTree}. */
const MAX_DEPTH = 32;

/**
 * Checks that `bytes` is a sequence of well-formed DER values, descending into every constructed
 * one: no end-of-contents or constructed string values, SEQUENCE and SET constructed, and the
 * universal BOOLEAN, INTEGER, BIT STRING, NULL and OBJECT IDENTIFIER values well formed. A CSR is
 * judged whole before its signature, as @peculiar/x509 (asn1js) judged it, so that a malformed
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
      checkBoolean(content, what);
      return;
    case TAG.INTEGER:
      checkInteger(content, what);
      return;
    case TAG.BIT_STRING:
      checkBitString(content, what);
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
