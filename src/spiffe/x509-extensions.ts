import { createHash, type KeyObject } from 'node:crypto';
import { splitDer } from './der.js';

/** OIDs of the extensions this library writes or understands. */
export const OID = {
  subjectKeyIdentifier: '2.5.29.14',
  keyUsage: '2.5.29.15',
  subjectAltName: '2.5.29.17',
  basicConstraints: '2.5.29.19',
  nameConstraints: '2.5.29.30',
  authorityKeyIdentifier: '2.5.29.35',
  extKeyUsage: '2.5.29.37',
} as const;

/** A DER TLV: its tag byte and content. */
export interface Tlv {
  tag: number;
  content: Uint8Array;
}

/** Splits concatenated TLVs into tags and contents; undefined when malformed. */
export function readTlvs(bytes: Uint8Array): Tlv[] | undefined {
  const parts = splitDer(bytes);
  if (parts === undefined) return undefined;
  return parts.map((p) => {
    const first = p[1] ?? 0;
    const header = first & 0x80 ? 2 + (first & 0x7f) : 2;
    return { tag: p[0] ?? 0, content: p.subarray(header) };
  });
}

/** Encodes one DER TLV. */
export function tlv(tag: number, content: Uint8Array): Uint8Array {
  const n = content.length;
  let header: number[];
  if (n < 0x80) header = [tag, n];
  else {
    const bytes: number[] = [];
    for (let v = n; v > 0; v = Math.floor(v / 256)) bytes.unshift(v % 256);
    header = [tag, 0x80 | bytes.length, ...bytes];
  }
  return Buffer.concat([Uint8Array.from(header), content]);
}

/**
 * The RFC 5280 §4.2.1.2 method-1 key identifier: SHA-1 of the subjectPublicKey BIT STRING's bytes.
 * Computed here so issuing needs no WebCrypto provider.
 */
export function keyIdentifier(publicKey: KeyObject): string {
  return spkiKeyIdentifier(publicKey.export({ type: 'spki', format: 'der' }));
}

/** {@link keyIdentifier} of a SubjectPublicKeyInfo already exported (exporting is not free). */
export function spkiKeyIdentifier(spki: Uint8Array): string {
  const outer = readTlvs(spki)?.[0];
  const bitString = outer && readTlvs(outer.content)?.[1];
  if (bitString === undefined) throw new TypeError('public key does not export as SubjectPublicKeyInfo');
  return createHash('sha1').update(bitString.content.subarray(1)).digest('hex');
}

/** Name constraints as this library reads and writes them: URI hosts and DNS names. */
export interface NameConstraints {
  permittedUris: string[];
  excludedUris: string[];
  permittedDns: string[];
  excludedDns: string[];
  /** True when a subtree has a name form this library does not evaluate. */
  hasOtherForms: boolean;
}

/**
 * Encodes a nameConstraints value permitting only the given URI hosts (trust domain names), the
 * form X509-SVID §4.2 describes.
 */
export function encodePermittedUriHosts(hosts: readonly string[]): Uint8Array {
  const subtrees = hosts.map((h) => tlv(0x30, tlv(0x86, Buffer.from(h, 'ascii'))));
  return tlv(0x30, tlv(0xa0, Buffer.concat(subtrees)));
}

/** Decodes a nameConstraints extension value; undefined when malformed. */
export function decodeNameConstraints(value: Uint8Array): NameConstraints | undefined {
  const outer = readTlvs(value);
  const seq = outer?.[0];
  if (outer?.length !== 1 || seq === undefined || seq.tag !== 0x30) return undefined;
  const result: NameConstraints = {
    permittedUris: [],
    excludedUris: [],
    permittedDns: [],
    excludedDns: [],
    hasOtherForms: false,
  };
  const groups = readTlvs(seq.content);
  if (groups === undefined) return undefined;
  for (const group of groups) {
    if (group.tag !== 0xa0 && group.tag !== 0xa1) return undefined;
    const permitted = group.tag === 0xa0;
    const subtrees = readTlvs(group.content);
    if (subtrees === undefined) return undefined;
    for (const subtree of subtrees) {
      const base = readTlvs(subtree.content)?.[0];
      if (subtree.tag !== 0x30 || base === undefined) return undefined;
      const text = Buffer.from(base.content).toString('latin1');
      if (base.tag === 0x86) (permitted ? result.permittedUris : result.excludedUris).push(text);
      else if (base.tag === 0x82) (permitted ? result.permittedDns : result.excludedDns).push(text);
      else result.hasOtherForms = true;
    }
  }
  return result;
}

/** RFC 5280 §4.2.1.10 URI constraint: a leading "." matches subdomains, otherwise the exact host. */
export function hostMatchesUriConstraint(host: string, constraint: string): boolean {
  const h = host.toLowerCase();
  const c = constraint.toLowerCase();
  return c.startsWith('.') ? h.endsWith(c) : h === c;
}

/** RFC 5280 §4.2.1.10 dNSName constraint: the name itself or any subdomain of it. */
export function dnsMatchesConstraint(name: string, constraint: string): boolean {
  const n = name.toLowerCase();
  const c = constraint.toLowerCase().replace(/^\./, '');
  return c === '' || n === c || n.endsWith(`.${c}`);
}
