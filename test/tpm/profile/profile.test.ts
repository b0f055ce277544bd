import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import {
  bootFacts,
  evaluateProfile,
  type FirmwareProfile,
  learnProfile,
  parseEventLog,
  replay,
  selfBootFacts,
  type Violation,
} from '../../../src/tpm/index.js';
import { editEvent, grubMeasured, replaceInData } from '../../helpers/eventlog-edit.js';
import { fixturePath } from '../../helpers/fixtures.js';

const read = (name: string): Buffer => readFileSync(fixturePath('eventlogs', ...name.split('/')));
const sbOn = read('keylime/binary_bios_measurements-secureboot');
const CMDLINE_EVENT = 94;
const GRUB_LINUX_EVENT = 91;
const SB_EVENT = 4;

function check(profile: FirmwareProfile, bytes: Buffer, pcrs?: readonly number[]): Violation[] {
  const log = parseEventLog(bytes);
  const facts =
    pcrs === undefined ? selfBootFacts(log, profile.bank) : bootFacts(log, { bank: profile.bank, pcrs });
  const values = replay(log).banks.get(profile.bank)?.pcrs ?? new Map<number, Buffer>();
  return evaluateProfile(profile, {
    facts,
    pcrValues: new Map([...values].map(([p, v]) => [p, v.toString('hex')])),
  });
}

const golden = learnProfile(selfBootFacts(parseEventLog(sbOn)), { name: 'golden' });

describe('a profile learnt from a golden boot', () => {
  it.each([
    'keylime/binary_bios_measurements-secureboot',
    'keylime/binary_bios_measurements',
    'keylime/mb_log.bin',
    'go-attestation/ubuntu_2104_shielded_vm_no_secure_boot_eventlog',
    'go-attestation/coreos_36_shielded_vm_no_secure_boot_eventlog',
    'tpm2-tools/event-moklisttrusted.bin',
    'tpm2-tools/event-sd-boot-fedora37.bin',
  ])('fits the boot it was learnt from: %s', (name) => {
    const bytes = read(name);
    const profile = learnProfile(selfBootFacts(parseEventLog(bytes)), { name: 'p' });
    expect(check(profile, bytes)).toEqual([]);
  });

  it('names each part of the boot: firmware, Secure Boot databases, shim/grub/kernel, MOK, command line, files', () => {
    expect(golden.pcrs).toEqual([0, 2, 4, 7, 8, 9, 14]);
    expect(golden.firmware?.crtmVersions).toEqual(['edk2-20240524-7.el9']);
    expect(golden.secureBoot).toMatchObject({ enabled: true });
    expect(golden.secureBoot?.pk).toHaveLength(1);
    expect(golden.secureBoot?.db?.every((id) => id.startsWith('x509:'))).toBe(true);
    expect(golden.secureBoot?.dbxRequired?.length).toBeGreaterThan(100);
    expect(golden.bootApplications?.length).toBeGreaterThanOrEqual(2);
    expect(golden.mok?.length).toBeGreaterThan(0);
    expect(golden.kernelCmdline).toEqual([
      expect.objectContaining({ exact: expect.stringContaining('console=ttyS0') }),
    ]);
    expect(golden.bootFiles?.length).toBeGreaterThan(0);
  });

  it('refuses another machine, listing every violated rule', () => {
    const violations = check(golden, read('keylime/mb_log.bin'));
    const rules = new Set(violations.map((v) => v.rule));
    for (const rule of [
      'firmware.crtm_versions',
      'firmware.blobs',
      'boot.applications',
      'boot.kernel_cmdline',
      'boot.files',
    ])
      expect(rules).toContain(rule);
    expect(violations.length).toBeGreaterThan(rules.size);
  });
});

describe('the rules, each on a changed copy of the golden boot', () => {
  it('boot.kernel_cmdline: a remeasured command line is refused, naming the event, expected and got', () => {
    let bytes = sbOn;
    for (const index of [GRUB_LINUX_EVENT, CMDLINE_EVENT])
      bytes = editEvent(bytes, index, {
        data: replaceInData(bytes, index, 'rhgb quiet', 'init=/evil'),
        remeasure: true,
        measured: grubMeasured,
      });
    const violations = check(golden, bytes);
    const cmdline = violations.find((v) => v.rule === 'boot.kernel_cmdline');
    expect(cmdline).toMatchObject({ pcr: 8, eventIndex: CMDLINE_EVENT });
    expect(cmdline?.got).toContain('init=/evil');
    expect(cmdline?.expected).toContain('rhgb quiet');
    expect(violations.map((v) => v.rule)).toContain('boot.grub_commands');
  });

  it('boot.kernel_cmdline: a pattern allows the variants it describes, anchored at both ends', () => {
    const profile: FirmwareProfile = {
      ...golden,
      kernelCmdline: [{ pattern: '\\(hd0,gpt2\\)/vmlinuz-\\S+ root=\\S+ ro .*' }],
    };
    expect(check(profile, sbOn).filter((v) => v.rule === 'boot.kernel_cmdline')).toEqual([]);
    const anchored: FirmwareProfile = { ...golden, kernelCmdline: [{ pattern: 'root=\\S+' }] };
    expect(check(anchored, sbOn).filter((v) => v.rule === 'boot.kernel_cmdline')).toHaveLength(1);
  });

  it('secure_boot.enabled: Secure Boot measured off is refused', () => {
    const event = parseEventLog(sbOn).events[SB_EVENT];
    if (event === undefined) throw new Error('no SecureBoot event');
    const data = Buffer.from(event.data);
    data[data.length - 1] = 0;
    const violations = check(golden, editEvent(sbOn, SB_EVENT, { data, remeasure: true }));
    expect(violations).toEqual([
      { rule: 'secure_boot.enabled', pcr: 7, expected: 'enabled', got: 'disabled' },
    ]);
  });

  it('secure_boot.enabled: a forged Secure Boot byte is unknown, and the event is reported as unbound', () => {
    const event = parseEventLog(sbOn).events[SB_EVENT];
    if (event === undefined) throw new Error('no SecureBoot event');
    const data = Buffer.from(event.data);
    data[data.length - 1] = 0;
    const rules = check(golden, editEvent(sbOn, SB_EVENT, { data })).map((v) => v.rule);
    expect(rules).toEqual(expect.arrayContaining(['secure_boot.enabled', 'events.bound']));
  });

  it('secure_boot.enabled: unknown when PCR 7 was not quoted, and pcrs names the missing PCR', () => {
    const violations = check(golden, sbOn, [0, 2, 4, 8, 9, 14]);
    expect(violations).toContainEqual({
      rule: 'pcrs',
      pcr: 7,
      expected: 'PCR 7 quoted and replayed',
      got: 'not quoted',
    });
  });

  it('secure_boot.dbx_required: a dbx without a required revocation is stale', () => {
    const revoked = `sha256:${'ab'.repeat(32)}`;
    const profile: FirmwareProfile = {
      ...golden,
      secureBoot: { ...golden.secureBoot, dbxRequired: [...(golden.secureBoot?.dbxRequired ?? []), revoked] },
    };
    expect(check(profile, sbOn)).toEqual([
      expect.objectContaining({ rule: 'secure_boot.dbx_required', pcr: 7, expected: revoked }),
    ]);
  });

  it('secure_boot.db: an entry the profile does not allow is refused', () => {
    const [first, ...rest] = golden.secureBoot?.db ?? [];
    const profile: FirmwareProfile = { ...golden, secureBoot: { ...golden.secureBoot, db: rest } };
    expect(check(profile, sbOn)).toEqual([expect.objectContaining({ rule: 'secure_boot.db', got: first })]);
  });

  it('boot.applications and other_events: an event nothing allows is a violation', () => {
    const [, ...apps] = golden.bootApplications ?? [];
    const profile: FirmwareProfile = { ...golden, bootApplications: apps, otherEvents: new Map() };
    const rules = check(profile, sbOn).map((v) => v.rule);
    expect(rules).toContain('boot.applications');
    expect(rules).toContain('other_events');
  });

  it('pcr_values: a PCR without events is judged by its exact value', () => {
    const profile: FirmwareProfile = {
      ...golden,
      pcrs: [...golden.pcrs, 11],
      pcrValues: new Map([[11, ['00'.repeat(32)]]]),
    };
    expect(check(profile, sbOn, [0, 2, 4, 7, 8, 9, 11, 14])).toEqual([]);
    const wrong: FirmwareProfile = { ...profile, pcrValues: new Map([[11, ['11'.repeat(32)]]]) };
    expect(check(wrong, sbOn, [0, 2, 4, 7, 8, 9, 11, 14])).toEqual([
      { rule: 'pcr_values', pcr: 11, expected: '11'.repeat(32), got: '00'.repeat(32) },
    ]);
  });

  it('pcrs: a PCR the profile needs that has no events and no pcr_values is a violation', () => {
    const profile: FirmwareProfile = { ...golden, pcrs: [...golden.pcrs, 11] };
    expect(check(profile, sbOn, [0, 2, 4, 7, 8, 9, 11, 14])).toEqual([
      {
        rule: 'pcrs',
        pcr: 11,
        expected: 'events in the log for PCR 11, or its value in pcr_values',
        got: 'no events',
      },
    ]);
  });
});
