import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { EV, EventLogError, MAX_EVENT_DATA, parseEventLog, replay } from '../../../src/tpm/eventlog/index.js';
import { fixturePath } from '../../helpers/fixtures.js';
import { agileLog, sha1Record, specIdData } from './build-log.js';

function parseError(log: Buffer): EventLogError {
  try {
    parseEventLog(log);
  } catch (e) {
    if (e instanceof EventLogError) return e;
    throw e;
  }
  throw new Error('the log parsed, but it should not have');
}

const separator = { pcr: 0, type: EV.SEPARATOR, data: Buffer.alloc(4) };

describe('logs from keylime that must be refused', () => {
  it('refuses the empty log with ERR_EVENTLOG_EMPTY', () => {
    const log = readFileSync(fixturePath('eventlogs', 'keylime', 'binary_bios_measurements-empty'));
    expect(parseError(log)).toMatchObject({ code: 'ERR_EVENTLOG_EMPTY', offset: 0 });
  });

  it('refuses the bogus text log: its first word read as a PCR index is out of range', () => {
    const log = readFileSync(fixturePath('eventlogs', 'keylime', 'binary_bios_measurements-bogus'));
    expect(log.toString('latin1')).toMatch(/^bogus/);
    const error = parseError(log);
    expect(error).toMatchObject({ code: 'ERR_EVENTLOG_MALFORMED', offset: 0, eventIndex: 0 });
    expect(error.message).toContain('PCR 1969712994');
  });
});

describe("tpm2-tools' specid-vendordata.bin", () => {
  it('is refused: its vendor info runs 4 bytes past the Spec ID event size (tpm2_eventlog reads past it)', () => {
    const log = readFileSync(fixturePath('eventlogs', 'tpm2-tools', 'specid-vendordata.bin'));
    // Event size field says 37, but the Spec ID layout with vendorInfoSize = 4 needs 41 bytes.
    expect(log.readUInt32LE(28)).toBe(37);
    expect(parseError(log)).toMatchObject({ code: 'ERR_EVENTLOG_TRUNCATED', offset: 69 });
  });
});

describe('synthetic malformed logs give a code and an offset', () => {
  const good = agileLog(
    ['sha1', 'sha256'],
    [separator, { pcr: 7, type: EV.EFI_ACTION, data: Buffer.from('x') }],
  );

  it('parses the untouched synthetic log (so the cuts below are what fails)', () => {
    expect(parseEventLog(good).events).toHaveLength(3);
  });

  // Every cut inside a record must be reported as truncation at or before the cut, never a crash.
  const specEnd = 32 + specIdData(['sha1', 'sha256']).length;
  const cuts = [1, 4, 20, 31, 33, 50, specEnd + 3, specEnd + 12, specEnd + 40, good.length - 1];
  it.each(cuts)('truncated at byte %i', (cut) => {
    const error = parseError(good.subarray(0, cut));
    expect(error.code).toBe('ERR_EVENTLOG_TRUNCATED');
    expect(error.offset).toBeLessThanOrEqual(cut);
  });

  it('refuses a huge event size before reading it (ERR_EVENTLOG_TOO_LARGE, offset of the size field)', () => {
    const log = Buffer.concat([sha1Record(0, EV.SEPARATOR, Buffer.alloc(20), Buffer.alloc(0))]);
    log.writeUInt32LE(0xfffffff0, 28);
    expect(parseError(log)).toMatchObject({ code: 'ERR_EVENTLOG_TOO_LARGE', offset: 28 });
  });

  it('reports an event size within the cap but past the end as truncation', () => {
    const log = sha1Record(0, EV.SEPARATOR, Buffer.alloc(20), Buffer.alloc(0));
    log.writeUInt32LE(MAX_EVENT_DATA, 28);
    expect(parseError(log)).toMatchObject({ code: 'ERR_EVENTLOG_TRUNCATED', offset: 32 });
  });

  it('refuses digest count 0xffffffff (ERR_EVENTLOG_TOO_LARGE at the count)', () => {
    const log = Buffer.from(good);
    log.writeUInt32LE(0xffffffff, specEnd + 8);
    expect(parseError(log)).toMatchObject({
      code: 'ERR_EVENTLOG_TOO_LARGE',
      offset: specEnd + 8,
      eventIndex: 1,
    });
  });

  it('refuses a digest of an algorithm the Spec ID event does not declare', () => {
    const log = Buffer.from(good);
    log.writeUInt16LE(0x000c, specEnd + 12);
    expect(parseError(log)).toMatchObject({ code: 'ERR_EVENTLOG_UNKNOWN_ALGORITHM', offset: specEnd + 12 });
  });

  it('refuses the same algorithm twice in one event', () => {
    const log = Buffer.from(good);
    log.writeUInt16LE(0x0004, specEnd + 12 + 22);
    // The second digest now claims sha1; the duplicate is caught before its size could matter.
    expect(parseError(log)).toMatchObject({ code: 'ERR_EVENTLOG_MALFORMED', offset: specEnd + 34 });
  });

  it('refuses a Spec ID event with 0xffffffff algorithms', () => {
    const log = Buffer.from(good);
    log.writeUInt32LE(0xffffffff, 32 + 24);
    expect(parseError(log)).toMatchObject({ code: 'ERR_EVENTLOG_TOO_LARGE', offset: 56 });
  });

  it('refuses a Spec ID event whose sha256 digest size is wrong', () => {
    const log = Buffer.from(good);
    log.writeUInt16LE(20, 32 + 28 + 4 + 2);
    expect(parseError(log)).toMatchObject({ code: 'ERR_EVENTLOG_MALFORMED', offset: 32 + 28 + 4 });
  });

  it('refuses a PCR index above 23 on an extended event', () => {
    const log = Buffer.from(good);
    log.writeUInt32LE(24, specEnd);
    expect(parseError(log)).toMatchObject({ code: 'ERR_EVENTLOG_MALFORMED', offset: specEnd, eventIndex: 1 });
  });

  it('accepts PCR 0xffffffff on EV_NO_ACTION, which real firmware writes and replay skips', () => {
    const log = agileLog(['sha256'], [{ pcr: 0xffffffff, type: EV.NO_ACTION, data: Buffer.from('x') }]);
    expect(replay(parseEventLog(log)).extended.size).toBe(0);
  });

  it('refuses a StartupLocality event after PCR0 was extended', () => {
    const locality = Buffer.concat([Buffer.from('StartupLocality\0', 'latin1'), Buffer.from([3])]);
    const log = parseEventLog(
      agileLog(['sha256'], [separator, { pcr: 0, type: EV.NO_ACTION, data: locality }]),
    );
    expect(() => replay(log)).toThrow(
      expect.objectContaining({ code: 'ERR_EVENTLOG_MALFORMED', eventIndex: 2 }),
    );
  });

  it('does not hang or crash on random bytes', () => {
    // A fixed pseudo-random sequence (LCG) so a failure is reproducible.
    let seed = 12345;
    const next = (): number => {
      seed = (seed * 1103515245 + 12345) >>> 0;
      return seed >>> 24;
    };
    for (let round = 0; round < 300; round++) {
      const junk = Buffer.from(Array.from({ length: 1 + (round % 200) }, next));
      // Start some from a valid header so the fuzz reaches the TCG_PCR_EVENT2 parser too.
      const input = round % 2 === 0 ? Buffer.concat([good.subarray(0, specEnd), junk]) : junk;
      try {
        parseEventLog(input);
      } catch (e) {
        expect(e).toBeInstanceOf(EventLogError);
      }
    }
  });
});
