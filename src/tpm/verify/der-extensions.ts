/**
 * Finds each extension's encoding, and the OID of the common ones, inside a certificate's DER, so
 * @peculiar/x509 can decode each extension once, from the certificate's own bytes, with the class
 * its OID names (see ek-certificate.ts). It walks certificates OpenSSL has already accepted;
 * anything unexpected is an error all the same.
 *
 * @module
 */

const SEQUENCE = 0x30;
const OBJECT_IDENTIFIER = 0x06;
/** The encoded arcs of id-pe (1.3.6.1.5.5.7.1). */
const ID_PE = [0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x01];
/** TBSCertificate's `extensions [3] EXPLICIT Extensions`. */
const EXTENSIONS_TAG = 0xa3;

interface Tlv {
  readonly tag: number;
  /** Offset of the content. */
  readonly start: number;
  /** Offset just past the content. */
  readonly end: number;
}

/** Reads the tag-length-value at `at`, which must end by `limit` (one-byte tags, definite lengths). */
function tlv(bytes: Uint8Array, at: number, limit: number): Tlv {
  const tag = bytes[at];
  let length = bytes[at + 1];
  if (tag === undefined || length === undefined || at + 2 > limit || (tag & 0x1f) === 0x1f)
    throw new Error(`no DER value at offset ${at}`);
  let start = at + 2;
  if (length & 0x80) {
    const count = length & 0x7f;
    if (count === 0 || count > 4) throw new Error(`unsupported DER length at offset ${at}`);
    length = 0;
    if (start + count > limit) throw new Error(`DER length at offset ${at} runs past its container`);
    for (let i = 0; i < count; i++) length = length * 256 + (bytes[start + i] ?? 0);
    start += count;
  }
  const end = start + length;
  if (end > limit) throw new Error(`DER value at offset ${at} runs past its container`);
  return { tag, start, end };
}

/** The encoding of every Extension of the certificate `der`, in order; empty when it has none. */
export function extensionEncodings(der: Uint8Array): Uint8Array[] {
  const certificate = tlv(der, 0, der.length);
  const tbs = tlv(der, certificate.start, certificate.end);
  if (certificate.tag !== SEQUENCE || tbs.tag !== SEQUENCE) throw new Error('not a certificate');
  for (let at = tbs.start; at < tbs.end; ) {
    const field = tlv(der, at, tbs.end);
    if (field.tag === EXTENSIONS_TAG) {
      const list = tlv(der, field.start, field.end);
      if (list.tag !== SEQUENCE) throw new Error('extensions are not a SEQUENCE');
      const out: Uint8Array[] = [];
      for (let next = list.start; next < list.end; ) {
        const extension = tlv(der, next, list.end);
        out.push(der.subarray(next, extension.end));
        next = extension.end;
      }
      return out;
    }
    at = field.end;
  }
  return [];
}

/**
 * The dotted OID of an Extension's extnID when it is one of the short forms every X.509 extension
 * OID of interest takes (id-ce 2.5.29.n, id-pe 1.3.6.1.5.5.7.1.n, one byte each); undefined for
 * any other, which the caller then decodes the ordinary way.
 */
export function extensionOid(encoding: Uint8Array): string | undefined {
  const outer = tlv(encoding, 0, encoding.length);
  const oid = tlv(encoding, outer.start, outer.end);
  if (outer.tag !== SEQUENCE || oid.tag !== OBJECT_IDENTIFIER) return undefined;
  const body = encoding.subarray(oid.start, oid.end);
  const last = body[body.length - 1] ?? 0x80;
  if (last & 0x80) return undefined;
  if (body.length === 3 && body[0] === 0x55 && body[1] === 0x1d) return `2.5.29.${last}`;
  if (body.length === 8 && ID_PE.every((b, i) => body[i] === b)) return `1.3.6.1.5.5.7.1.${last}`;
  return undefined;
}
