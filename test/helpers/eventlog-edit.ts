import { createHash } from 'node:crypto';
import { parseEventLog } from '../../src/tpm/index.js';

/**
 * Edits one event of a real crypto-agile log in place, keeping its length: new data (same size) and,
 * when `remeasure` is set, digests recomputed as the measuring code would have (`measured` gives the
 * bytes it hashes; by default the data itself). Without `remeasure` the digests stay: a forged log.
 */
export function editEvent(
  log: Buffer,
  index: number,
  edit: { data?: Buffer; remeasure?: boolean; measured?: (data: Buffer) => Buffer },
): Buffer {
  const out = Buffer.from(log);
  const event = parseEventLog(out).events[index];
  if (event === undefined) throw new Error(`the log has no event ${index}`);
  if (edit.data !== undefined) {
    if (edit.data.length !== event.data.length)
      throw new Error(
        `event ${index}: new data is ${edit.data.length} bytes, the event holds ${event.data.length}`,
      );
    edit.data.copy(out, event.dataOffset);
  }
  if (edit.remeasure) {
    const data = out.subarray(event.dataOffset, event.dataOffset + event.data.length);
    const measured = edit.measured?.(data) ?? data;
    // TCG_PCR_EVENT2: pcr, type, count, then per digest its algorithm id and bytes.
    let at = event.offset + 12;
    for (const d of event.digests) {
      at += 2;
      createHash(d.bank).update(measured).digest().copy(out, at);
      at += d.digest.length;
    }
  }
  return out;
}

/** Replace `from` with `to` (same length) inside the data of `index`. */
export function replaceInData(log: Buffer, index: number, from: string, to: string): Buffer {
  if (from.length !== to.length)
    throw new Error('replaceInData keeps the length: from and to must be as long');
  const event = parseEventLog(log).events[index];
  if (event === undefined) throw new Error(`the log has no event ${index}`);
  const text = event.data.toString('latin1');
  if (!text.includes(from)) throw new Error(`event ${index}'s data does not contain ${JSON.stringify(from)}`);
  return Buffer.from(text.replace(from, to), 'latin1');
}

/** What grub measures of a `grub_cmd: …` or `kernel_cmdline: …` event: the text after the prefix, without the NUL. */
export function grubMeasured(data: Buffer): Buffer {
  return data.subarray(data.indexOf(': ') + 2, data.length - 1);
}
