import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { parse as parseYaml } from 'yaml';
import { EventLogError } from '../../../src/tpm/eventlog/errors.js';
import { parseEventLog } from '../../../src/tpm/eventlog/parse.js';
import {
  compareWithPcrs,
  type PcrValues,
  replay,
  WORKAROUND_MISSING_EXIT_BOOT_SERVICES,
} from '../../../src/tpm/eventlog/replay.js';
import { fixturePath } from '../../helpers/fixtures.js';

interface ExpectedEntry {
  source: string;
  pcrs: Record<string, Record<string, string>>;
}

const expected = JSON.parse(readFileSync(fixturePath('eventlogs', 'expected_pcrs.json'), 'utf8')) as Record<
  string,
  ExpectedEntry
>;

function toPcrValues(banks: Record<string, Record<string, string>>): Map<string, Map<number, Buffer>> {
  return new Map(
    Object.entries(banks).map(([bank, pcrs]) => [
      bank,
      new Map(
        Object.entries(pcrs).map(([pcr, hex]) => [Number(pcr), Buffer.from(hex.replace(/^0x/, ''), 'hex')]),
      ),
    ]),
  );
}

function without(pcrs: PcrValues, drop: { bank?: string; pcr?: number }): Map<string, Map<number, Buffer>> {
  const out = new Map<string, Map<number, Buffer>>();
  for (const [bank, values] of pcrs) {
    if (drop.bank === bank && drop.pcr === undefined) continue;
    out.set(
      bank,
      new Map([...values].filter(([pcr]) => !(drop.pcr === pcr && (drop.bank ?? bank) === bank))),
    );
  }
  return out;
}

function loadLog(name: string): Buffer {
  return readFileSync(fixturePath('eventlogs', ...name.split('/')));
}

/** The two entries expected_pcrs.json documents as not replaying as given; asserted separately below. */
const EXCEPTIONS = new Set(['go-attestation/sb_cert_eventlog', 'go-attestation/ebs_event_missing_eventlog']);

describe('replay of the real logs in test/fixtures equals the PCRs their sources assert', () => {
  const plain = Object.entries(expected).filter(([name]) => !EXCEPTIONS.has(name));
  it('covers the 13 plain entries of expected_pcrs.json', () => {
    expect(plain).toHaveLength(13);
  });

  it.each(plain)('%s', (name, entry) => {
    const log = parseEventLog(loadLog(name));
    const pcrs = toPcrValues(entry.pcrs);
    const result = compareWithPcrs(log, pcrs);
    expect(result.workarounds).toEqual([]);
    // Belt and braces: compare value by value too, so a bug in compareWithPcrs cannot hide one here.
    for (const [bank, values] of pcrs) {
      for (const [pcr, value] of values) {
        expect(result.replay.banks.get(bank)?.pcrs.get(pcr)?.toString('hex'), `${bank} PCR ${pcr}`).toBe(
          value.toString('hex'),
        );
      }
    }
  });
});

describe('the two documented exceptions', () => {
  it('sb_cert_eventlog: every PCR replays except PCR10, which the source asserts but the log never extends', () => {
    const log = parseEventLog(loadLog('go-attestation/sb_cert_eventlog'));
    const pcrs = toPcrValues(expected['go-attestation/sb_cert_eventlog']?.pcrs ?? {});
    expect(pcrs.get('sha1')?.size).toBe(24);
    expect(replay(log).extended.has(10)).toBe(false);
    let error: unknown;
    try {
      compareWithPcrs(log, pcrs);
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(EventLogError);
    expect(error).toMatchObject({
      code: 'ERR_EVENTLOG_REPLAY_MISMATCH',
      pcr: 10,
      bank: 'sha1',
      eventIndex: undefined,
    });
    const rest = without(without(pcrs, { bank: 'sha1', pcr: 10 }), { bank: 'sha256', pcr: 10 });
    expect(compareWithPcrs(log, rest).workarounds).toEqual([]);
    // A policy that relies on PCR10 is refused outright, whatever value the TPM reports.
    expect(() => compareWithPcrs(log, rest, { required: [10] })).toThrow(
      expect.objectContaining({ code: 'ERR_EVENTLOG_PCR_NOT_EXTENDED', pcr: 10 }),
    );
  });

  it('ebs_event_missing_eventlog: SHA-1 PCR5 replays only with the ExitBootServices workaround, SHA-256 cannot be replayed', () => {
    const log = parseEventLog(loadLog('go-attestation/ebs_event_missing_eventlog'));
    const pcrs = toPcrValues(expected['go-attestation/ebs_event_missing_eventlog']?.pcrs ?? {});
    expect(log.format).toBe('sha1');
    const sha1Only = without(pcrs, { bank: 'sha256' });
    // Without the workaround, plain replay differs from the asserted value.
    expect(replay(log).banks.get('sha1')?.pcrs.get(5)?.toString('hex')).not.toBe(
      pcrs.get('sha1')?.get(5)?.toString('hex'),
    );
    const result = compareWithPcrs(log, sha1Only);
    expect(result.workarounds).toEqual([WORKAROUND_MISSING_EXIT_BOOT_SERVICES]);
    expect(result.replay.banks.get('sha1')?.pcrs.get(5)?.toString('hex')).toBe(
      '31245808d6d35849bc394f6343f2b3ff908ed5e3',
    );
    expect(() => compareWithPcrs(log, pcrs)).toThrow(
      expect.objectContaining({ code: 'ERR_EVENTLOG_BANK_NOT_IN_LOG', bank: 'sha256' }),
    );
  });
});

describe("tpm2-tools' expected YAML pcrs: sections", () => {
  const names = [
    'event-arch-linux.bin',
    'event-bootorder.bin',
    'event-gce-ubuntu-2104-log.bin',
    'event-moklisttrusted.bin',
    'event-postcode.bin',
    'event-sd-boot-fedora37.bin',
    'event-uefi-sha1-log.bin',
    'event-uefiaction.bin',
    'event-uefiservices.bin',
    'event-uefivar.bin',
  ];
  it.each(names)('%s', (name) => {
    const doc = parseYaml(
      readFileSync(fixturePath('eventlogs', 'tpm2-tools', 'expected-yaml', `${name}.yaml`), 'utf8'),
      {
        intAsBigInt: true,
        // tpm2-tools prints some events with a repeated key (event-uefi-sha1-log.bin.yaml).
        uniqueKeys: false,
      },
    ) as { pcrs: Record<string, Record<string, bigint>> };
    const banks: Record<string, Record<string, string>> = {};
    for (const [bank, values] of Object.entries(doc.pcrs)) {
      const size = bank === 'sha1' ? 40 : bank === 'sha256' ? 64 : bank === 'sha384' ? 96 : 128;
      banks[bank] = Object.fromEntries(
        Object.entries(values).map(([pcr, v]) => [pcr, v.toString(16).padStart(size, '0')]),
      );
    }
    const log = parseEventLog(loadLog(`tpm2-tools/${name}`));
    expect(Object.keys(banks).length).toBeGreaterThan(0);
    expect(compareWithPcrs(log, toPcrValues(banks)).workarounds).toEqual([]);
  });
});
