import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { bootFacts, EV, parseEventLog, selfBootFacts, summarize } from '../../../src/tpm/index.js';
import { editEvent, replaceInData } from '../../helpers/eventlog-edit.js';
import { fixturePath } from '../../helpers/fixtures.js';

const read = (name: string): Buffer => readFileSync(fixturePath('eventlogs', ...name.split('/')));
/** keylime's Lenovo log, Secure Boot off: event 12 is PCR 7's SecureBoot variable with data byte 0. */
const sbOff = read('keylime/binary_bios_measurements');
const SB_OFF_EVENT = 12;
/** keylime's OVMF log, Secure Boot on: event 4 is the SecureBoot variable, 94 grub's kernel_cmdline. */
const sbOn = read('keylime/binary_bios_measurements-secureboot');
const CMDLINE_EVENT = 94;

const ALL_PCRS = Array.from({ length: 24 }, (_, i) => i);

function flipSecureBootByte(log: Buffer, index: number, value: number): Buffer {
  const event = parseEventLog(log).events[index];
  if (event === undefined) throw new Error('no such event');
  const data = Buffer.from(event.data);
  data[data.length - 1] = value;
  return editEvent(log, index, { data });
}

describe('Secure Boot comes only from bound PCR 7 data', () => {
  it('reads disabled from the real Secure-Boot-off log, whose SecureBoot event binds', () => {
    const facts = bootFacts(parseEventLog(sbOff), { bank: 'sha256', pcrs: ALL_PCRS });
    expect(facts.secureBoot).toBe('disabled');
    expect(facts.unbound.filter((e) => e.pcr === 7)).toEqual([]);
  });

  it('refuses the forged byte: flipping SecureBoot to 1 in that log gives unknown and reports the event by name', () => {
    const forged = parseEventLog(flipSecureBootByte(sbOff, SB_OFF_EVENT, 1));
    const facts = bootFacts(forged, { bank: 'sha256', pcrs: ALL_PCRS });
    expect(facts.secureBoot).toBe('unknown');
    const [unbound] = facts.unbound.filter((e) => e.pcr === 7);
    expect(unbound).toMatchObject({
      index: SB_OFF_EVENT,
      pcr: 7,
      typeName: 'EV_EFI_VARIABLE_DRIVER_CONFIG',
      offset: forged.events[SB_OFF_EVENT]?.offset,
      meaning: { kind: 'unbound', reason: 'the digest is not the hash of the event data' },
    });
    expect(summarize(forged).secureBoot).toBe('unknown');
    expect(summarize(forged).unbound.map((e) => e.eventIndex)).toContain(SB_OFF_EVENT);
  });

  it('believes a remeasured byte (firmware really measured Secure Boot on)', () => {
    const remeasured = flipSecureBootByte(sbOff, SB_OFF_EVENT, 1);
    const log = parseEventLog(editEvent(remeasured, SB_OFF_EVENT, { remeasure: true }));
    expect(bootFacts(log, { bank: 'sha256', pcrs: ALL_PCRS }).secureBoot).toBe('enabled');
  });

  it('says unknown when PCR 7 was not quoted, even for a log whose SecureBoot event binds', () => {
    const log = parseEventLog(sbOn);
    expect(bootFacts(log, { bank: 'sha256', pcrs: [0, 1, 2, 3, 4, 5, 6] }).secureBoot).toBe('unknown');
    expect(bootFacts(log, { bank: 'sha256', pcrs: [7] }).secureBoot).toBe('enabled');
  });

  it('gives nothing from PCRs that were not quoted', () => {
    const facts = bootFacts(parseEventLog(sbOn), { bank: 'sha256', pcrs: [4] });
    expect(new Set(facts.events.map((e) => e.pcr))).toEqual(new Set([4]));
  });

  it('refuses a bank the log does not record', () => {
    expect(() => bootFacts(parseEventLog(sbOn), { bank: 'sha1', pcrs: [7] })).toThrow(
      expect.objectContaining({ code: 'ERR_EVENTLOG_BANK_NOT_IN_LOG' }),
    );
  });

  it.each([
    ['keylime/binary_bios_measurements', 'disabled'],
    ['keylime/binary_bios_measurements-secureboot', 'enabled'],
    ['keylime/mb_log.bin', 'enabled'],
    ['go-attestation/ubuntu_2104_shielded_vm_no_secure_boot_eventlog', 'disabled'],
    ['go-attestation/sb_cert_eventlog', 'enabled'],
    ['go-attestation/windows_gcp_shielded_vm.eventlog.bin', 'enabled'],
    // Zero-length SecureBoot data (go-tpm-tools' AllowEmptySBVar) is no state at all.
    ['go-attestation/crypto_agile_eventlog', 'unknown'],
  ])('%s: Secure Boot %s, as its source says', (name, state) => {
    expect(selfBootFacts(parseEventLog(read(name))).secureBoot).toBe(state);
  });
});

describe('grub strings bind in the form grub measures them', () => {
  it('reads the kernel command line of a real grub boot', () => {
    const facts = selfBootFacts(parseEventLog(sbOn));
    const event = facts.events.find((e) => e.index === CMDLINE_EVENT);
    expect(event?.meaning).toMatchObject({ kind: 'kernel-cmdline' });
    expect(event?.meaning.kind === 'kernel-cmdline' && event.meaning.cmdline).toContain('console=ttyS0');
  });

  it('reports an edited command line whose digest was left alone, and derives nothing from it', () => {
    const data = replaceInData(sbOn, CMDLINE_EVENT, 'rhgb quiet', 'init=/evil');
    const facts = selfBootFacts(parseEventLog(editEvent(sbOn, CMDLINE_EVENT, { data })));
    const event = facts.events.find((e) => e.index === CMDLINE_EVENT);
    expect(event?.meaning).toEqual({
      kind: 'unbound',
      reason: 'the digest is not the hash of the text after "kernel_cmdline:"',
    });
    expect(facts.unbound.map((e) => e.index)).toContain(CMDLINE_EVENT);
  });

  it('does not accept the whole logged string (prefix and NUL) as the measured form', () => {
    const log = editEvent(sbOn, CMDLINE_EVENT, { remeasure: true });
    const event = selfBootFacts(parseEventLog(log)).events.find((e) => e.index === CMDLINE_EVENT);
    expect(event?.meaning.kind).toBe('unbound');
  });
});

describe('UEFI boot variables', () => {
  it('accept VariableData alone (the PFP form) and the whole structure (seen in firmware), nothing else', () => {
    const log = parseEventLog(sbOn);
    const boot = log.events.find((e) => e.type === EV.EFI_VARIABLE_BOOT);
    if (boot === undefined) throw new Error('the log has no EV_EFI_VARIABLE_BOOT');
    const facts = (bytes: Buffer) =>
      selfBootFacts(parseEventLog(bytes)).events.find((e) => e.index === boot.index);
    expect(facts(sbOn)?.meaning.kind).toBe('variable');
    expect(facts(editEvent(sbOn, boot.index, { remeasure: true }))?.meaning.kind).toBe('variable');
    const tampered = Buffer.from(boot.data);
    tampered.writeUInt8((tampered.at(-1) ?? 0) ^ 0xff, tampered.length - 1);
    expect(facts(editEvent(sbOn, boot.index, { data: tampered }))?.meaning).toMatchObject({
      kind: 'unbound',
    });
  });
});

describe('events whose digest measures something outside the log', () => {
  it('keep their digest as the fact and their data as a label only', () => {
    const facts = selfBootFacts(parseEventLog(sbOn));
    const apps = facts.events.filter((e) => e.type === EV.EFI_BOOT_SERVICES_APPLICATION);
    expect(apps.length).toBeGreaterThan(0);
    for (const app of apps) expect(app.meaning.kind).toBe('content');
    const files = facts.events.filter((e) => e.pcr === 9);
    expect(files.some((e) => e.meaning.kind === 'content' && e.meaning.label?.includes('vmlinuz'))).toBe(
      true,
    );
  });

  it('report an undecodable event as unbound, naming why', () => {
    const log = parseEventLog(sbOn);
    const sb = log.events[4];
    if (sb === undefined) throw new Error('no event 4');
    const broken = Buffer.from(sb.data);
    broken.writeBigUInt64LE(BigInt(broken.length), 16); // UnicodeNameLength past the end
    const facts = selfBootFacts(parseEventLog(editEvent(sbOn, 4, { data: broken, remeasure: true })));
    const event = facts.events.find((e) => e.index === 4);
    expect(event?.meaning.kind).toBe('unbound');
    expect(event?.meaning.kind === 'unbound' && event.meaning.reason).toMatch(/^its data does not decode: /);
    expect(facts.secureBoot).toBe('unknown');
  });
});
