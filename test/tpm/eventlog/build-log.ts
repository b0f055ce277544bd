import { createHash } from 'node:crypto';

/** Builds small crypto-agile or SHA-1 logs byte by byte, so tests can state exactly what is in them. */

export interface SyntheticEvent {
  pcr: number;
  type: number;
  data: Buffer;
  /** Digests by bank; by default H(data) in every bank of the log. */
  digests?: Record<string, Buffer>;
}

const ALGS: Record<string, { id: number; size: number }> = {
  sha1: { id: 0x0004, size: 20 },
  sha256: { id: 0x000b, size: 32 },
  sha384: { id: 0x000c, size: 48 },
};

function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(n >>> 0);
  return b;
}

function u16(n: number): Buffer {
  const b = Buffer.alloc(2);
  b.writeUInt16LE(n);
  return b;
}

export function specIdData(banks: readonly string[], vendorInfo = Buffer.alloc(0)): Buffer {
  return Buffer.concat([
    Buffer.from('Spec ID Event03\0', 'latin1'),
    u32(0),
    Buffer.from([0, 2, 0, 2]),
    u32(banks.length),
    ...banks.map((b) => {
      const alg = ALGS[b];
      if (alg === undefined) throw new Error(`no such bank ${b}`);
      return Buffer.concat([u16(alg.id), u16(alg.size)]);
    }),
    Buffer.from([vendorInfo.length]),
    vendorInfo,
  ]);
}

export function sha1Record(pcr: number, type: number, digest: Buffer, data: Buffer): Buffer {
  return Buffer.concat([u32(pcr), u32(type), digest, u32(data.length), data]);
}

export function agileRecord(banks: readonly string[], event: SyntheticEvent): Buffer {
  const digests = banks.map((bank) => {
    const alg = ALGS[bank];
    if (alg === undefined) throw new Error(`no such bank ${bank}`);
    const digest = event.digests?.[bank] ?? createHash(bank).update(event.data).digest();
    return Buffer.concat([u16(alg.id), digest]);
  });
  return Buffer.concat([
    u32(event.pcr),
    u32(event.type),
    u32(digests.length),
    ...digests,
    u32(event.data.length),
    event.data,
  ]);
}

export function agileLog(banks: readonly string[], events: readonly SyntheticEvent[]): Buffer {
  return Buffer.concat([
    sha1Record(0, 3, Buffer.alloc(20), specIdData(banks)),
    ...events.map((e) => agileRecord(banks, e)),
  ]);
}
