import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';

/**
 * The Authenticode digest of a PE/COFF file (Microsoft's "Windows Authenticode Portable Executable
 * Signature Format"): what UEFI firmware and shim extend into PCR 4 for an image they start. It hashes
 * the headers without the checksum and the certificate-table entry, the sections in file order, and
 * whatever follows them except the signatures.
 */
export function authenticodeDigest(path: string, algorithm = 'sha256'): Buffer {
  const pe = readFileSync(path);
  const fail = (why: string): never => {
    throw new Error(`${path} is not a PE image Authenticode can hash: ${why}`);
  };
  if (pe.toString('latin1', 0, 2) !== 'MZ') fail('no MZ header');
  const peHeader = pe.readUInt32LE(0x3c);
  if (pe.toString('latin1', peHeader, peHeader + 4) !== 'PE\0\0') fail('no PE signature');
  const sectionCount = pe.readUInt16LE(peHeader + 6);
  const optionalHeader = peHeader + 24;
  const optionalHeaderSize = pe.readUInt16LE(peHeader + 20);
  const magic = pe.readUInt16LE(optionalHeader);
  if (magic !== 0x10b && magic !== 0x20b) fail(`optional header magic 0x${magic.toString(16)}`);
  const checksum = optionalHeader + 64;
  const headersSize = pe.readUInt32LE(optionalHeader + 60);
  // Data directory 4 (the certificate table) sits after 96 (PE32) or 112 (PE32+) header bytes.
  const certEntry = optionalHeader + (magic === 0x20b ? 112 : 96) + 4 * 8;
  const certSize = pe.readUInt32LE(certEntry + 4);

  const hash = createHash(algorithm);
  hash.update(pe.subarray(0, checksum));
  hash.update(pe.subarray(checksum + 4, certEntry));
  hash.update(pe.subarray(certEntry + 8, headersSize));
  const sections = Array.from({ length: sectionCount }, (_, i) => {
    const entry = optionalHeader + optionalHeaderSize + i * 40;
    return { size: pe.readUInt32LE(entry + 16), offset: pe.readUInt32LE(entry + 20) };
  })
    .filter((s) => s.size > 0)
    .sort((a, b) => a.offset - b.offset);
  let hashed = headersSize;
  for (const section of sections) {
    hash.update(pe.subarray(section.offset, section.offset + section.size));
    hashed += section.size;
  }
  if (pe.length > hashed + certSize) hash.update(pe.subarray(hashed, pe.length - certSize));
  return hash.digest();
}
