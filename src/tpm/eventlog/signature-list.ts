import { createHash } from 'node:crypto';
import { formatGuid } from './decode.js';
import { EventLogError } from './errors.js';
import { Reader } from './reader.js';

/** UEFI spec §32.4.1: the signature types Secure Boot databases hold in practice. */
const EFI_CERT_X509 = 'a5c059a1-94e4-4aa7-87b5-ab155c2bf072';
const EFI_CERT_SHA256 = 'c1c41626-504c-4092-aca9-41f936934328';

const LIST_HEADER = 16 + 4 + 4 + 4;
const OWNER_SIZE = 16;
/** No real db or dbx holds more; a larger count is a malformed list, refused before looping. */
const MAX_ENTRIES = 100_000;

/**
 * How profiles name a signature database entry: `x509:<sha256 of the DER certificate>`,
 * `sha256:<the hash itself>` (dbx revocations), or `<signature type GUID>:<sha256 of the data>`.
 * The SignatureOwner GUID is not part of it: it says who enrolled the entry, not what it trusts.
 */
export type SignatureEntryId = string;

/**
 * Parse a PK/KEK/db/dbx value: a sequence of EFI_SIGNATURE_LIST. Throws `ERR_EVENTLOG_EVENT_DATA`
 * when the lists do not tile the data exactly.
 */
export function parseSignatureLists(
  data: Buffer,
  where: { eventIndex: number; offset: number },
): SignatureEntryId[] {
  const entries: SignatureEntryId[] = [];
  const r = new Reader(data, where.offset, 0, data.length, `event ${where.eventIndex}'s signature lists`);
  const bad = (message: string): EventLogError =>
    new EventLogError('ERR_EVENTLOG_EVENT_DATA', `Event ${where.eventIndex}: ${message}`, {
      offset: r.absolute,
      eventIndex: where.eventIndex,
    });
  try {
    while (r.remaining > 0) {
      const type = formatGuid(r.bytes(16, 'SignatureType'));
      const listSize = r.u32('SignatureListSize');
      const headerSize = r.u32('SignatureHeaderSize');
      const size = r.u32('SignatureSize');
      if (size <= OWNER_SIZE) throw bad(`a signature size of ${size} leaves no room for data`);
      const body = listSize - LIST_HEADER - headerSize;
      if (listSize < LIST_HEADER + headerSize || body % size !== 0)
        throw bad(`SignatureListSize ${listSize} does not hold whole ${size}-byte signatures`);
      if (body / size > MAX_ENTRIES)
        throw bad(`${body / size} signatures in one list is over ${MAX_ENTRIES}`);
      r.bytes(headerSize, 'SignatureHeader');
      for (let i = 0; i < body / size; i++) {
        r.bytes(OWNER_SIZE, 'SignatureOwner');
        entries.push(entryId(type, r.bytes(size - OWNER_SIZE, 'SignatureData')));
      }
    }
  } catch (e) {
    if (e instanceof EventLogError && e.code === 'ERR_EVENTLOG_TRUNCATED') throw bad(e.message);
    throw e;
  }
  return entries;
}

function entryId(type: string, data: Buffer): string {
  if (type === EFI_CERT_SHA256 && data.length === 32) return `sha256:${data.toString('hex')}`;
  const digest = createHash('sha256').update(data).digest('hex');
  return type === EFI_CERT_X509 ? `x509:${digest}` : `${type}:${digest}`;
}
