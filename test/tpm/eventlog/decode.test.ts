import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import {
  compareWithPcrs,
  type DecodedEvent,
  decodeAll,
  decodeEvent,
  EV,
  parseEventLog,
  replay,
  summarize,
} from '../../../src/tpm/eventlog/index.js';
import { fixturePath } from '../../helpers/fixtures.js';
import { agileLog, sha1Record } from './build-log.js';

function u64(n: bigint): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(n);
  return b;
}

function guidBytes(guid: string): Buffer {
  const hex = guid.replace(/-/g, '');
  const b = Buffer.from(hex, 'hex');
  b.subarray(0, 4).reverse();
  b.subarray(4, 6).reverse();
  b.subarray(6, 8).reverse();
  return b;
}

const EFI_GLOBAL = '8be4df61-93ca-11d2-aa0d-00e098032b8c';

function variableData(name: string, data: Buffer, guid = EFI_GLOBAL): Buffer {
  return Buffer.concat([
    guidBytes(guid),
    u64(BigInt(name.length)),
    u64(BigInt(data.length)),
    Buffer.from(name, 'utf16le'),
    data,
  ]);
}

function decodeOne(type: number, data: Buffer, pcr = 0): DecodedEvent {
  const log = parseEventLog(agileLog(['sha256'], [{ pcr, type, data }]));
  const event = log.events[1];
  if (event === undefined) throw new Error('no event');
  return decodeEvent(event, log.specId);
}

describe('decodeEvent', () => {
  it('decodes the SecureBoot variable and its state', () => {
    expect(
      decodeOne(EV.EFI_VARIABLE_DRIVER_CONFIG, variableData('SecureBoot', Buffer.from([1])), 7),
    ).toMatchObject({
      kind: 'uefi-variable',
      guid: EFI_GLOBAL,
      name: 'SecureBoot',
      secureBoot: true,
    });
    expect(
      decodeOne(EV.EFI_VARIABLE_DRIVER_CONFIG, variableData('SecureBoot', Buffer.from([0])), 7),
    ).toMatchObject({
      secureBoot: false,
    });
  });

  it('refuses variable data whose declared length runs past the event, with the offset of the data', () => {
    const data = variableData('db', Buffer.alloc(4));
    data.writeBigUInt64LE(100n, 24);
    const log = parseEventLog(agileLog(['sha256'], [{ pcr: 7, type: EV.EFI_VARIABLE_DRIVER_CONFIG, data }]));
    const event = log.events[1];
    if (event === undefined) throw new Error('no event');
    expect(() => decodeEvent(event)).toThrow(
      expect.objectContaining({
        code: 'ERR_EVENTLOG_EVENT_DATA',
        eventIndex: 1,
        offset: event.dataOffset + 32,
      }),
    );
  });

  it('refuses trailing bytes after a driver-config variable', () => {
    const data = Buffer.concat([variableData('PK', Buffer.alloc(2)), Buffer.from([0])]);
    expect(() => decodeOne(EV.EFI_VARIABLE_DRIVER_CONFIG, data, 7)).toThrow(
      expect.objectContaining({ code: 'ERR_EVENTLOG_EVENT_DATA' }),
    );
  });

  it('tells a normal separator from the error value', () => {
    expect(decodeOne(EV.SEPARATOR, Buffer.alloc(4))).toEqual({ kind: 'separator', value: 0, error: false });
    expect(decodeOne(EV.SEPARATOR, Buffer.alloc(4, 0xff))).toEqual({
      kind: 'separator',
      value: 0xffffffff,
      error: true,
    });
  });

  it('decodes EFI actions, UCS-2 and 8-bit strings, and keeps binary CRTM versions as bytes', () => {
    expect(decodeOne(EV.EFI_ACTION, Buffer.from('Calling EFI Application from Boot Option'))).toEqual({
      kind: 'text',
      text: 'Calling EFI Application from Boot Option',
      encoding: 'utf-8',
    });
    expect(decodeOne(EV.S_CRTM_VERSION, Buffer.from('edk2\0', 'utf16le'))).toEqual({
      kind: 'text',
      text: 'edk2',
      encoding: 'utf-16le',
    });
    expect(decodeOne(EV.IPL, Buffer.from('grub_cmd: linux /vmlinuz\0'), 8)).toMatchObject({
      text: 'grub_cmd: linux /vmlinuz',
    });
    expect(decodeOne(EV.S_CRTM_VERSION, guidBytes('546bfb1e-1d0c-4055-a4ad-4ef4bf17b83a'))).toEqual({
      kind: 'bytes',
    });
  });

  it('decodes firmware blobs, blob2 with its description, and POST codes of both shapes', () => {
    expect(decodeOne(EV.EFI_PLATFORM_FIRMWARE_BLOB, Buffer.concat([u64(0x820000n), u64(0xe0000n)]))).toEqual({
      kind: 'firmware-blob',
      base: 0x820000n,
      length: 0xe0000n,
    });
    const blob2 = Buffer.concat([Buffer.from([4]), Buffer.from('PEIF'), u64(1n), u64(2n)]);
    expect(decodeOne(EV.EFI_PLATFORM_FIRMWARE_BLOB2, blob2)).toEqual({
      kind: 'firmware-blob',
      description: 'PEIF',
      base: 1n,
      length: 2n,
    });
    expect(decodeOne(EV.POST_CODE, Buffer.concat([u64(5n), u64(6n)]))).toMatchObject({
      base: 5n,
      length: 6n,
    });
    expect(decodeOne(EV.POST_CODE, Buffer.from('ACPI DATA'))).toMatchObject({ text: 'ACPI DATA' });
  });

  it('decodes an image load event with its device path', () => {
    const path = Buffer.from([0x7f, 0xff, 0x04, 0x00]);
    const data = Buffer.concat([u64(0xbec2b018n), u64(1334816n), u64(0n), u64(BigInt(path.length)), path]);
    expect(decodeOne(EV.EFI_BOOT_SERVICES_APPLICATION, data, 4)).toEqual({
      kind: 'image-load',
      location: 0xbec2b018n,
      length: 1334816n,
      linkTimeAddress: 0n,
      devicePath: path,
    });
  });

  it('decodes a GPT event with its partitions', () => {
    const header = Buffer.alloc(92);
    header.write('EFI PART', 0, 'latin1');
    guidBytes('11111111-2222-3333-4444-555555555555').copy(header, 56);
    header.writeUInt32LE(128, 84);
    const entry = Buffer.alloc(128);
    guidBytes('c12a7328-f81f-11d2-ba4b-00a0c93ec93b').copy(entry, 0);
    entry.writeBigUInt64LE(2048n, 32);
    entry.writeBigUInt64LE(4095n, 40);
    entry.write('EFI System', 56, 'utf16le');
    const decoded = decodeOne(EV.EFI_GPT_EVENT, Buffer.concat([header, u64(1n), entry]), 5);
    expect(decoded).toMatchObject({
      kind: 'gpt',
      diskGuid: '11111111-2222-3333-4444-555555555555',
      partitions: [
        {
          typeGuid: 'c12a7328-f81f-11d2-ba4b-00a0c93ec93b',
          startingLba: 2048n,
          endingLba: 4095n,
          name: 'EFI System',
        },
      ],
    });
    expect(() => decodeOne(EV.EFI_GPT_EVENT, Buffer.concat([header, u64(0xffffffffn)]), 5)).toThrow(
      expect.objectContaining({ code: 'ERR_EVENTLOG_EVENT_DATA' }),
    );
  });

  it('keeps unknown event types raw', () => {
    expect(decodeOne(0x12345678, Buffer.from('whatever'))).toEqual({ kind: 'raw' });
  });
});

describe('replay rules', () => {
  const locality = (n: number): Buffer =>
    Buffer.concat([Buffer.from('StartupLocality\0', 'latin1'), Buffer.from([n])]);
  const sep = Buffer.alloc(4);
  const sepDigest = createHash('sha256').update(sep).digest();

  it('starts PCR0 at the StartupLocality value (3 → 00…03) and never extends EV_NO_ACTION', () => {
    const log = parseEventLog(
      agileLog(
        ['sha256'],
        [
          { pcr: 0, type: EV.NO_ACTION, data: locality(3) },
          { pcr: 0, type: EV.SEPARATOR, data: sep },
        ],
      ),
    );
    const start = Buffer.alloc(32);
    start[31] = 3;
    const want = createHash('sha256').update(start).update(sepDigest).digest();
    const result = replay(log);
    expect(result.startupLocality).toBe(3);
    expect(result.banks.get('sha256')?.pcrs.get(0)).toEqual(want);
  });

  it('starts PCR0 at locality 4 for an H-CRTM event, and extends the H-CRTM digest', () => {
    const hcrtmDigest = createHash('sha256').update('HCRTM').digest();
    const log = parseEventLog(
      agileLog(['sha256'], [{ pcr: 0, type: EV.EFI_HCRTM_EVENT, data: Buffer.from('HCRTM') }]),
    );
    const start = Buffer.alloc(32);
    start[31] = 4;
    expect(replay(log).banks.get('sha256')?.pcrs.get(0)).toEqual(
      createHash('sha256').update(start).update(hcrtmDigest).digest(),
    );
  });

  it('starts PCRs 17-22 at all-ones and the others at zero', () => {
    const log = parseEventLog(agileLog(['sha1'], [{ pcr: 17, type: EV.SEPARATOR, data: sep }]));
    const bank = replay(log).banks.get('sha1');
    expect(bank?.pcrs.get(17)).toEqual(
      createHash('sha1')
        .update(Buffer.alloc(20, 0xff))
        .update(createHash('sha1').update(sep).digest())
        .digest(),
    );
    expect(bank?.pcrs.get(22)).toEqual(Buffer.alloc(20, 0xff));
    expect(bank?.pcrs.get(23)).toEqual(Buffer.alloc(20));
  });

  it('replays only the banks the Spec ID event names', () => {
    const log = parseEventLog(agileLog(['sha256'], [{ pcr: 7, type: EV.SEPARATOR, data: sep }]));
    expect([...replay(log).banks.keys()]).toEqual(['sha256']);
  });

  it('a SHA-1-format log replays the sha1 bank only', () => {
    const log = parseEventLog(sha1Record(4, EV.SEPARATOR, createHash('sha1').update(sep).digest(), sep));
    expect(log.format).toBe('sha1');
    expect([...replay(log).banks.keys()]).toEqual(['sha1']);
  });

  it('reports the event that diverges: the last event of the mismatching PCR', () => {
    const log = parseEventLog(
      agileLog(
        ['sha256'],
        [
          { pcr: 7, type: EV.SEPARATOR, data: sep },
          { pcr: 4, type: EV.SEPARATOR, data: sep },
          { pcr: 7, type: EV.EFI_ACTION, data: Buffer.from('x') },
        ],
      ),
    );
    const pcrs = new Map([['sha256', new Map([[7, Buffer.alloc(32, 1)]])]]);
    expect(() => compareWithPcrs(log, pcrs)).toThrow(
      expect.objectContaining({
        code: 'ERR_EVENTLOG_REPLAY_MISMATCH',
        pcr: 7,
        bank: 'sha256',
        eventIndex: 3,
      }),
    );
  });
});

describe('summary of real logs', () => {
  it('keylime secure-boot log: Secure Boot on, ExitBootServices seen, separators in PCR 0-7', () => {
    const log = parseEventLog(
      readFileSync(fixturePath('eventlogs', 'keylime', 'binary_bios_measurements-secureboot')),
    );
    expect(summarize(log)).toMatchObject({
      format: 'crypto-agile',
      banks: ['sha256'],
      eventCount: 99,
      secureBoot: 'enabled',
      secureBootVariables: ['SecureBoot', 'PK', 'KEK', 'db', 'dbx'],
      exitBootServicesInvoked: true,
      exitBootServicesResult: 'success',
      separators: [0, 1, 2, 3, 4, 5, 6, 7],
      separatorErrors: [],
      crtmVersion: 'edk2-20240524-7.el9',
      digestMismatches: [],
      undecodable: [],
      workarounds: [],
    });
  });

  it('sb_cert_eventlog: shim authority events with data past their declared lengths are decoded and reported', () => {
    const log = parseEventLog(readFileSync(fixturePath('eventlogs', 'go-attestation', 'sb_cert_eventlog')));
    const shim = decodeAll(log).filter(
      (d) => d.decoded?.kind === 'uefi-variable' && d.decoded.trailing !== undefined,
    );
    expect(shim.map((d) => [d.event.index, d.event.typeName])).toEqual([
      [12, 'EV_EFI_VARIABLE_AUTHORITY'],
      [14, 'EV_EFI_VARIABLE_AUTHORITY'],
    ]);
    expect(shim[0]?.decoded).toMatchObject({ name: 'Shim', guid: '605dab50-e046-4300-abb6-3dd810dd8b23' });
    expect(summarize(log)).toMatchObject({ undecodable: [], workarounds: ['shim-authority-trailing-data'] });
  });

  it('keylime laptop log: Secure Boot off, StartupLocality 3, Lenovo CRTM version', () => {
    const log = parseEventLog(readFileSync(fixturePath('eventlogs', 'keylime', 'binary_bios_measurements')));
    expect(summarize(log)).toMatchObject({
      secureBoot: 'disabled',
      startupLocality: 3,
      crtmVersion: 'N40ET41W ',
    });
  });

  it('crypto_agile_eventlog: an empty SecureBoot variable gives unknown, not disabled', () => {
    const log = parseEventLog(
      readFileSync(fixturePath('eventlogs', 'go-attestation', 'crypto_agile_eventlog')),
    );
    const secureBoot = decodeAll(log).find(
      (d) => d.decoded?.kind === 'uefi-variable' && d.decoded.name === 'SecureBoot',
    );
    expect(secureBoot?.decoded).toMatchObject({ data: Buffer.alloc(0) });
    expect(summarize(log).secureBoot).toBe('unknown');
  });

  it('Windows log: WBCL separators in PCRs 12-14 are not errors', () => {
    const log = parseEventLog(
      readFileSync(fixturePath('eventlogs', 'go-attestation', 'windows_gcp_shielded_vm.eventlog.bin')),
    );
    expect(summarize(log)).toMatchObject({ format: 'sha1', secureBoot: 'enabled', separatorErrors: [] });
  });

  it('short_no_action_eventlog: a lone StartupLocality record is a SHA-1-format log', () => {
    const log = parseEventLog(
      readFileSync(fixturePath('eventlogs', 'go-attestation', 'short_no_action_eventlog')),
    );
    expect(summarize(log)).toMatchObject({ format: 'sha1', eventCount: 1, startupLocality: 3 });
  });

  it('flags an event whose digest is not the hash of its data', () => {
    const log = parseEventLog(
      agileLog(
        ['sha256'],
        [{ pcr: 5, type: EV.EFI_ACTION, data: Buffer.from('said'), digests: { sha256: Buffer.alloc(32) } }],
      ),
    );
    expect(summarize(log).digestMismatches).toEqual([
      { eventIndex: 1, typeName: 'EV_EFI_ACTION', bank: 'sha256' },
    ]);
  });
});
