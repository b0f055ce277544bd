import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { compareWithPcrs, decodeAll, EV, parseEventLog, summarize } from '../../../src/tpm/eventlog/index.js';
import { type BootResult, bootWithVtpm, runningVmProcesses, stopAllVms } from '../../helpers/qemu.js';

// One real boot for the whole file: OVMF measures into a swtpm vTPM, the guest kernel exports the
// log and reads the PCRs. Under TCG this takes roughly 10-30 s.
let boot: BootResult;

beforeAll(async () => {
  boot = await bootWithVtpm({
    files: [{ path: '/etc/ironroot-probe', content: 'probe-file-content\n' }],
    commands: [
      'cat /etc/ironroot-probe',
      'echo guest-kernel=$(uname -r)',
      'head -n 1 /sys/kernel/security/ima/ascii_runtime_measurements',
    ],
  });
}, 300_000);

afterAll(async () => {
  await stopAllVms();
});

describe('a real OVMF event log from qemu with a swtpm vTPM', () => {
  it('the guest read every PCR of the sha256 bank from the vTPM', () => {
    expect(boot.pcrs.get('sha256')?.size).toBe(24);
  });

  it('replays to the PCRs the guest read, PCRs 0-7 each extended by the log, in every bank it declares', () => {
    const log = parseEventLog(boot.eventLog);
    expect(log.format).toBe('crypto-agile');
    expect(log.banks).toContain('sha256');
    const quoted = new Map(
      log.banks.map((bank) => {
        const values = boot.pcrs.get(bank);
        if (values === undefined) throw new Error(`the guest has no ${bank} bank`);
        return [bank, new Map([...values].filter(([pcr]) => pcr <= 7))];
      }),
    );
    const result = compareWithPcrs(log, quoted, { required: [0, 1, 2, 3, 4, 5, 6, 7] });
    expect(result.workarounds).toEqual([]);
  });

  it("replays all 24 sha256 PCRs but PCR10, which the kernel's IMA extends outside the firmware log", () => {
    const log = parseEventLog(boot.eventLog);
    const sha256 = boot.pcrs.get('sha256');
    if (sha256 === undefined) throw new Error('no sha256 bank');
    // Debian's kernel runs IMA, which extends its boot_aggregate into PCR10 (the guest shows it).
    expect(boot.commandOutput).toMatch(/^10 [0-9a-f]{40} ima-\w+ sha256:[0-9a-f]{64} boot_aggregate\s*$/m);
    expect(() => compareWithPcrs(log, new Map([['sha256', sha256]]))).toThrow(
      expect.objectContaining({ code: 'ERR_EVENTLOG_REPLAY_MISMATCH', pcr: 10, eventIndex: undefined }),
    );
    const rest = new Map([...sha256].filter(([pcr]) => pcr !== 10));
    expect(rest.size).toBe(23);
    expect(compareWithPcrs(log, new Map([['sha256', rest]])).workarounds).toEqual([]);
  });

  it('a changed PCR value is caught (the comparison above can fail)', () => {
    const log = parseEventLog(boot.eventLog);
    const pcr7 = Buffer.from(boot.pcrs.get('sha256')?.get(7) ?? Buffer.alloc(32));
    pcr7[0] = (pcr7[0] ?? 0) ^ 1;
    expect(() => compareWithPcrs(log, new Map([['sha256', new Map([[7, pcr7]])]]))).toThrow(
      expect.objectContaining({ code: 'ERR_EVENTLOG_REPLAY_MISMATCH', pcr: 7 }),
    );
  });

  it('decodes: separators in PCRs 0-7, SecureBoot off (OVMF without enrolled keys), ExitBootServices seen', () => {
    const log = parseEventLog(boot.eventLog);
    const summary = summarize(log);
    expect(summary).toMatchObject({
      separators: [0, 1, 2, 3, 4, 5, 6, 7],
      separatorErrors: [],
      secureBoot: 'disabled',
      exitBootServicesInvoked: true,
      undecodable: [],
      digestMismatches: [],
    });
    expect(summary.secureBootVariables).toEqual(
      expect.arrayContaining(['SecureBoot', 'PK', 'KEK', 'db', 'dbx']),
    );
    const secureBoot = decodeAll(log).find(
      (d) =>
        d.event.type === EV.EFI_VARIABLE_DRIVER_CONFIG &&
        d.decoded?.kind === 'uefi-variable' &&
        d.decoded.name === 'SecureBoot',
    );
    expect(secureBoot?.event.pcr).toBe(7);
  });

  it('runs the extra commands with the extra files in the guest', () => {
    expect(boot.commandOutput).toContain('probe-file-content');
    expect(boot.commandOutput).toMatch(/guest-kernel=\d+\.\d+/);
  });
});

describe('bootWithVtpm failure handling', () => {
  it('gives up after timeoutMs with the serial tail, and leaves no swtpm or qemu running', async () => {
    // 1 s is far too short for OVMF to reach the kernel, so this always hits the timeout path.
    await expect(bootWithVtpm({ timeoutMs: 1000 })).rejects.toThrow(/did not power off within 1000 ms/);
    expect(runningVmProcesses()).toBe(0);
  });
});
