import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  compareWithPcrs,
  decodeAll,
  EV,
  type EventLog,
  type PcrValues,
  parseEventLog,
  summarize,
} from '../../../src/tpm/eventlog/index.js';
import { authenticodeDigest } from '../../helpers/authenticode.js';
import { fixturePath } from '../../helpers/fixtures.js';
import {
  type BootResult,
  bootFromDisk,
  defaultKernel,
  SIGNED_GRUB,
  SIGNED_SHIM,
  stopAllVms,
} from '../../helpers/qemu.js';

// Debian's signed chain (shim → grub → kernel) booted from a GPT disk under OVMF with a swtpm vTPM.
// Each variant boots once for the whole file, one after the other (TCG boots take 15-30 s each).
// no_timer_check: a TCG guest on a loaded host can miss the kernel's early timer-interrupt check
// and panic ("IO-APIC + timer doesn't work"); panic=-1 (with qemu's -no-reboot) ends such a boot at once.
const GOLDEN = 'console=ttyS0 quiet panic=-1 no_timer_check ironroot=golden';
const OTHER = 'console=ttyS0 quiet panic=-1 no_timer_check ironroot=other';
// What scripts/record-ovmf-eventlogs.mjs booted the recorded fixtures with.
const RECORDED_GOLDEN = 'console=ttyS0 quiet ironroot=golden';
const RECORDED_OTHER = 'console=ttyS0 quiet ironroot=other';
const BOOT_HOOK_MS = 300_000;
// The guest kernel's own view of Secure Boot and its command line (`quiet` keeps both off the console).
const KERNEL_VIEW = ['dmesg | grep "secureboot:"', 'cat /proc/cmdline'];

let secure: BootResult;
let secureOther: BootResult;
let insecure: BootResult;

/** The guest's PCRs in the banks the log declares, without PCR 10: the kernel's IMA extends it after the log. */
function firmwarePcrs(log: EventLog, pcrs: PcrValues): PcrValues {
  return new Map(
    log.banks.map((bank) => {
      const values = pcrs.get(bank);
      if (values === undefined) throw new Error(`the guest read no ${bank} bank, which the log declares`);
      return [bank, new Map([...values].filter(([pcr]) => pcr !== 10))];
    }),
  );
}

function texts(log: EventLog, pcr: number): string[] {
  return decodeAll(log).flatMap(({ event, decoded }) =>
    event.pcr === pcr && event.type === EV.IPL && decoded?.kind === 'text' ? [decoded.text] : [],
  );
}

function bootApplications(log: EventLog) {
  return decodeAll(log).flatMap(({ event, decoded }) =>
    event.pcr === 4 && event.type === EV.EFI_BOOT_SERVICES_APPLICATION && decoded?.kind === 'image-load'
      ? [
          {
            sha256: event.digests.find((d) => d.bank === 'sha256')?.digest.toString('hex'),
            path: decoded.devicePath,
          },
        ]
      : [],
  );
}

function sha256Of(log: EventLog, pcr: number, text: string): string | undefined {
  const event = log.events.find(
    (e) => e.pcr === pcr && e.type === EV.IPL && e.data.toString('utf8').replace(/\0+$/, '') === text,
  );
  return event?.digests.find((d) => d.bank === 'sha256')?.digest.toString('hex');
}

const utf16 = (s: string): Buffer => Buffer.from(s, 'utf16le');
const hex = (b: Buffer): string => b.toString('hex');

describe('live boots of Debian signed shim → grub → kernel under OVMF', () => {
  // One hook for the three boots, run one after the other on a shared machine; each boot keeps the
  // helper's own 180 s limit.
  beforeAll(async () => {
    secure = await bootFromDisk({ secureBoot: true, kernelCmdline: GOLDEN, commands: KERNEL_VIEW });
    secureOther = await bootFromDisk({ secureBoot: true, kernelCmdline: OTHER, commands: KERNEL_VIEW });
    insecure = await bootFromDisk({ secureBoot: false, kernelCmdline: GOLDEN, commands: KERNEL_VIEW });
  }, 3 * BOOT_HOOK_MS);
  afterAll(async () => {
    await stopAllVms();
  });

  it('the Secure Boot boot replays, in every bank the log declares, to the PCRs the guest read (all but IMA’s PCR 10)', () => {
    const log = parseEventLog(secure.eventLog);
    expect([...log.banks].sort()).toEqual([...secure.pcrs.keys()].sort());
    const result = compareWithPcrs(log, firmwarePcrs(log, secure.pcrs), {
      required: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 14],
    });
    expect(result.workarounds).toEqual([]);
  });

  it('the Secure Boot off boot replays too', () => {
    const log = parseEventLog(insecure.eventLog);
    const result = compareWithPcrs(log, firmwarePcrs(log, insecure.pcrs), { required: [0, 4, 7, 8, 9, 14] });
    expect(result.workarounds).toEqual([]);
  });

  it('PCR 7’s SecureBoot variable says enabled on the Secure Boot boot and disabled on the other', () => {
    const on = summarize(parseEventLog(secure.eventLog));
    const off = summarize(parseEventLog(insecure.eventLog));
    expect(on.secureBoot).toBe('enabled');
    expect(off.secureBoot).toBe('disabled');
    expect(on.undecodable).toEqual([]);
    expect(on.digestMismatches).toEqual([]);
    expect(secure.commandOutput).toContain('secureboot: Secure boot enabled');
    expect(insecure.commandOutput).toContain('secureboot: Secure boot disabled');
  });

  it('PCR 4 holds the Authenticode digests of shim (from \\EFI\\BOOT\\BOOTX64.EFI), then grub, then the kernel twice under Secure Boot', () => {
    const shim = hex(authenticodeDigest(SIGNED_SHIM));
    const grub = hex(authenticodeDigest(SIGNED_GRUB));
    const kernel = hex(authenticodeDigest(defaultKernel()));
    const apps = bootApplications(parseEventLog(secure.eventLog));
    expect(apps.map((a) => a.sha256)).toEqual([shim, grub, kernel, kernel]);
    // Firmware logs shim with its full device path, shim logs grub with the file path alone.
    expect(apps[0]?.path.includes(utf16('\\EFI\\BOOT\\BOOTX64.EFI'))).toBe(true);
    expect(apps[1]?.path.includes(utf16('\\EFI\\BOOT\\grubx64.efi'))).toBe(true);
  });

  it('PCR 4 holds shim and grub but not the kernel when Secure Boot is off', () => {
    const apps = bootApplications(parseEventLog(insecure.eventLog));
    expect(apps.map((a) => a.sha256)).toEqual([
      hex(authenticodeDigest(SIGNED_SHIM)),
      hex(authenticodeDigest(SIGNED_GRUB)),
    ]);
  });

  it('PCR 8 has grub’s kernel_cmdline: and grub_cmd: linux events with each boot’s command line', () => {
    const golden = texts(parseEventLog(secure.eventLog), 8);
    const other = texts(parseEventLog(secureOther.eventLog), 8);
    expect(golden).toContain(`kernel_cmdline: /vmlinuz ${GOLDEN}`);
    expect(golden).toContain(`grub_cmd: linux /vmlinuz ${GOLDEN}`);
    expect(other).toContain(`kernel_cmdline: /vmlinuz ${OTHER}`);
    expect(other).toContain(`grub_cmd: linux /vmlinuz ${OTHER}`);
    expect(other.join('\n')).not.toContain('ironroot=golden');
    // What grub measured is what the kernel got.
    expect(secure.commandOutput).toContain(`BOOT_IMAGE=/vmlinuz ${GOLDEN}\n`);
    expect(secureOther.commandOutput).toContain(`BOOT_IMAGE=/vmlinuz ${OTHER}\n`);
  });

  it('only PCRs 8 and 9 (command, grub.cfg) differ between the two command lines; 0-7 and 14 are equal', () => {
    const a = secure.pcrs.get('sha256');
    const b = secureOther.pcrs.get('sha256');
    if (a === undefined || b === undefined) throw new Error('no sha256 bank');
    for (const pcr of [8, 9])
      expect(hex(a.get(pcr) ?? Buffer.alloc(0))).not.toBe(hex(b.get(pcr) ?? Buffer.alloc(0)));
    for (const pcr of [0, 1, 2, 3, 4, 5, 6, 7, 14]) expect(a.get(pcr)).toEqual(b.get(pcr));
  });

  it('PCR 9 has grub’s file measurements: grub.cfg and the kernel, by their file digests', () => {
    const log = parseEventLog(secure.eventLog);
    expect(texts(log, 9)).toEqual(['(hd0,gpt1)/EFI/debian/grub.cfg', '/vmlinuz', '/initramfs.cpio']);
    const cfg = `set timeout=0\nlinux /vmlinuz ${GOLDEN}\ninitrd /initramfs.cpio\nboot\n`;
    expect(sha256Of(log, 9, '(hd0,gpt1)/EFI/debian/grub.cfg')).toBe(
      createHash('sha256').update(cfg).digest('hex'),
    );
    expect(sha256Of(log, 9, '/vmlinuz')).toBe(
      createHash('sha256').update(readFileSync(defaultKernel())).digest('hex'),
    );
  });

  it('PCR 14 has shim’s MokList, MokListX and MokListTrusted events', () => {
    for (const boot of [secure, insecure]) {
      const names = parseEventLog(boot.eventLog)
        .events.filter((e) => e.pcr === 14 && e.type === EV.IPL)
        .map((e) => e.data.toString('latin1').replace(/\0+$/, ''));
      expect(names).toEqual(['MokList', 'MokListX', 'MokListTrusted']);
    }
  });
});

describe('recorded fixtures in test/fixtures/eventlogs/ovmf', () => {
  const cases = [
    { name: 'debian-secureboot', secureBoot: 'enabled', cmdline: RECORDED_GOLDEN },
    { name: 'debian-secureboot-cmdline', secureBoot: 'enabled', cmdline: RECORDED_OTHER },
    { name: 'debian-secureboot-off', secureBoot: 'disabled', cmdline: RECORDED_GOLDEN },
  ] as const;

  for (const { name, secureBoot, cmdline } of cases) {
    it(`${name}.bin replays to its own .pcrs.json (every bank, all PCRs but IMA’s 10), SecureBoot ${secureBoot}`, () => {
      const log = parseEventLog(readFileSync(fixturePath('eventlogs', 'ovmf', `${name}.bin`)));
      const json = JSON.parse(
        readFileSync(fixturePath('eventlogs', 'ovmf', `${name}.pcrs.json`), 'utf8'),
      ) as Record<string, Record<string, string>>;
      const pcrs = new Map(
        Object.entries(json).map(([bank, values]) => [
          bank,
          new Map(Object.entries(values).map(([pcr, value]) => [Number(pcr), Buffer.from(value, 'hex')])),
        ]),
      );
      expect(pcrs.get('sha256')?.size).toBe(24);
      expect([...log.banks].sort()).toEqual([...pcrs.keys()].sort());
      expect(
        compareWithPcrs(log, firmwarePcrs(log, pcrs), { required: [0, 4, 7, 8, 9, 14] }).workarounds,
      ).toEqual([]);
      expect(summarize(log).secureBoot).toBe(secureBoot);
      expect(texts(log, 8)).toContain(`kernel_cmdline: /vmlinuz ${cmdline}`);
    });
  }
});
