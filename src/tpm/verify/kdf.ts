/**
 * The two key derivation functions of TPM 2.0 (Part 1, §11.4.10): KDFa, the SP800-108 counter-mode
 * KDF with HMAC, and KDFe, the SP800-56A concatenation KDF used after an ECDH exchange.
 *
 * Both take a label as a string; the TPM appends a zero octet to it (unless it already ends in one),
 * so "IDENTITY" and "IDENTITY\0" derive the same bits. Only whole-octet lengths are accepted: every
 * use in credential protection asks for a key size or a digest size, and the spec's masking of a
 * partial first octet would be dead code here.
 *
 * @module
 */
import { createHash, createHmac } from 'node:crypto';
import { digestSize, hashName } from '../codec/hash.js';

function u32(value: number): Buffer {
  const out = Buffer.alloc(4);
  out.writeUInt32BE(value);
  return out;
}

function labelBytes(label: string): Buffer {
  const text = Buffer.from(label, 'latin1');
  return text.length > 0 && text[text.length - 1] === 0 ? text : Buffer.concat([text, Buffer.of(0)]);
}

function checkBits(bits: number): void {
  if (!Number.isInteger(bits) || bits <= 0 || bits % 8 !== 0 || bits > 0xffff_ffff)
    throw new RangeError(`KDF output length must be a positive multiple of 8 bits, got ${bits}`);
}

/**
 * KDFa(hashAlg, key, label, contextU, contextV, bits):
 * K(i) = HMAC_hash(key, [i]₃₂ ‖ label ‖ 0x00 ‖ contextU ‖ contextV ‖ [bits]₃₂), i = 1, 2, …,
 * concatenated and cut to `bits`.
 */
export function kdfa(
  hashAlg: number,
  key: Uint8Array,
  label: string,
  contextU: Uint8Array,
  contextV: Uint8Array,
  bits: number,
): Buffer {
  checkBits(bits);
  const fixed = Buffer.concat([labelBytes(label), contextU, contextV, u32(bits)]);
  const hash = hashName(hashAlg);
  return counterMode(bits / 8, digestSize(hashAlg), (i) =>
    createHmac(hash, key).update(u32(i)).update(fixed).digest(),
  );
}

/**
 * KDFe(hashAlg, Z, label, partyUInfo, partyVInfo, bits):
 * K(i) = hash([i]₃₂ ‖ Z ‖ label ‖ 0x00 ‖ partyUInfo ‖ partyVInfo), i = 1, 2, …, cut to `bits`.
 * For credential protection, partyUInfo is the ephemeral point's x and partyVInfo the EK's x.
 */
export function kdfe(
  hashAlg: number,
  z: Uint8Array,
  label: string,
  partyUInfo: Uint8Array,
  partyVInfo: Uint8Array,
  bits: number,
): Buffer {
  checkBits(bits);
  const otherInfo = Buffer.concat([labelBytes(label), partyUInfo, partyVInfo]);
  const hash = hashName(hashAlg);
  return counterMode(bits / 8, digestSize(hashAlg), (i) =>
    createHash(hash).update(u32(i)).update(z).update(otherInfo).digest(),
  );
}

function counterMode(bytes: number, blockSize: number, block: (i: number) => Buffer): Buffer {
  const blocks: Buffer[] = [];
  for (let i = 1; i <= Math.ceil(bytes / blockSize); i++) blocks.push(block(i));
  return Buffer.concat(blocks).subarray(0, bytes);
}
