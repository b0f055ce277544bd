import { type ChildProcess, spawn } from 'node:child_process';
import {
  chmodSync,
  closeSync,
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  truncateSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';

/**
 * Boots real UEFI firmware (OVMF) under qemu (TCG, no KVM needed) with a swtpm vTPM, a Debian kernel
 * and a tiny busybox initramfs built on the fly. OVMF measures the boot into the vTPM and hands the
 * kernel a real TCG event log; the guest prints that log and the PCRs on the serial console and
 * powers off. Later tests add their own files and commands (an agent, say) to the initramfs.
 *
 * Debian's kernel has the TPM TIS driver built in (CONFIG_TCG_TIS=y), so no modules are loaded.
 */

export interface GuestFile {
  /** Absolute path inside the guest. */
  path: string;
  /** Content, or a host file to copy. */
  content?: Buffer | string;
  source?: string;
  mode?: number;
}

export interface BootOptions {
  /** Extra files for the initramfs. */
  files?: GuestFile[];
  /** Shell commands run in the guest after the log and PCRs are printed; their output is returned. */
  commands?: string[];
  /** Give up (and kill everything) after this long. TCG boots take 10–30 s; the default is generous. */
  timeoutMs?: number;
  memoryMb?: number;
  kernel?: string;
  ovmfCode?: string;
  ovmfVars?: string;
}

export interface BootResult {
  /** The guest's /sys/kernel/security/tpm0/binary_bios_measurements. */
  eventLog: Buffer;
  /** PCR values the guest kernel read from the vTPM: bank → PCR index → value. */
  pcrs: Map<string, Map<number, Buffer>>;
  /** Output of `commands`, between markers. */
  commandOutput: string;
  /** Everything the guest wrote on the serial console (firmware, kernel, init). */
  serial: string;
  durationMs: number;
}

const MARK = 'IRONROOT';
const live = new Set<ChildProcess>();

/** Kill every swtpm and qemu this module started that is still running, and wait until they are gone. */
export async function stopAllVms(): Promise<void> {
  await Promise.all([...live].map(killAndWait));
}

/** How many swtpm and qemu processes this module started are still running. */
export function runningVmProcesses(): number {
  return live.size;
}

/** Counts `child` among this module's processes until it exits (see stopAllVms). */
export function track(child: ChildProcess): ChildProcess {
  live.add(child);
  child.on('exit', () => live.delete(child));
  return child;
}

/** SIGKILL, then resolves once the process is gone. */
export function killAndWait(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    child.once('exit', () => resolve());
    child.kill('SIGKILL');
  });
}

function firstExisting(candidates: readonly string[], what: string): string {
  const found = candidates.find((p) => existsSync(p));
  if (found === undefined) throw new Error(`${what} not found; tried ${candidates.join(', ')}`);
  return found;
}

/** The newest Debian kernel in /boot. */
export function defaultKernel(): string {
  const kernels = readdirSync('/boot')
    .filter((f) => f.startsWith('vmlinuz-'))
    .sort((a, b) => a.localeCompare(b, undefined, { numeric: true }));
  const newest = kernels.at(-1);
  if (newest === undefined) throw new Error('no /boot/vmlinuz-* (install linux-image-amd64)');
  return join('/boot', newest);
}

const INIT = `#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t securityfs securityfs /sys/kernel/security
mount -t devtmpfs devtmpfs /dev
echo ${MARK}-EVENTLOG-BEGIN
base64 /sys/kernel/security/tpm0/binary_bios_measurements
echo ${MARK}-EVENTLOG-END
echo ${MARK}-PCRS-BEGIN
for bank in /sys/class/tpm/tpm0/pcr-*; do
  for pcr in $(seq 0 23); do echo "\${bank##*/pcr-} $pcr $(cat $bank/$pcr)"; done
done
echo ${MARK}-PCRS-END
echo ${MARK}-CMD-BEGIN
/bin/sh /commands.sh 2>&1
echo ${MARK}-CMD-END
poweroff -f
`;

function buildInitramfs(
  dir: string,
  files: readonly GuestFile[],
  commands: readonly string[],
): Promise<string> {
  const root = join(dir, 'initramfs');
  for (const d of ['bin', 'proc', 'sys', 'dev', 'tmp']) mkdirSync(join(root, d), { recursive: true });
  copyFileSync('/bin/busybox', join(root, 'bin', 'busybox'));
  writeFileSync(join(root, 'init'), INIT, { mode: 0o755 });
  writeFileSync(join(root, 'commands.sh'), `${commands.join('\n')}\n`, { mode: 0o755 });
  for (const file of files) {
    const target = join(root, file.path);
    mkdirSync(dirname(target), { recursive: true });
    if (file.source !== undefined) copyFileSync(file.source, target);
    else writeFileSync(target, file.content ?? '');
    if (file.mode !== undefined) chmodSync(target, file.mode);
  }
  const out = join(dir, 'initramfs.cpio');
  return new Promise((resolve, reject) => {
    // `find` lists paths relative to the root; cpio's newc format is what the kernel unpacks.
    const child = spawn('sh', ['-c', `cd "${root}" && find . | cpio -o -H newc --quiet > "${out}"`], {
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => {
      stderr += d.toString();
    });
    child.on('error', reject);
    child.on('exit', (code) =>
      code === 0
        ? resolve(out)
        : reject(new Error(`building the initramfs failed (cpio ${code}): ${stderr}`)),
    );
  });
}

async function waitForFile(path: string, ms: number, child: ChildProcess): Promise<void> {
  const deadline = Date.now() + ms;
  while (!existsSync(path)) {
    if (child.exitCode !== null)
      throw new Error(`swtpm exited with ${child.exitCode} before creating ${path}`);
    if (Date.now() > deadline) throw new Error(`swtpm did not create ${path} within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

function between(serial: string, name: string): string {
  const begin = `${MARK}-${name}-BEGIN\n`;
  const start = serial.indexOf(begin);
  const end = serial.indexOf(`${MARK}-${name}-END`, start);
  if (start < 0 || end < 0) {
    throw new Error(`the guest printed no ${name} section; serial console tail:\n${serial.slice(-3000)}`);
  }
  return serial.slice(start + begin.length, end);
}

// panic=-1 with -no-reboot turns a guest panic into a qemu exit instead of a hang. no_timer_check:
// a TCG guest on a loaded host can miss the kernel's early timer-interrupt check and panic.
const DEFAULT_CMDLINE = 'console=ttyS0 panic=-1 quiet no_timer_check';

/** Direct kernel boot: OVMF starts the kernel given with -kernel; no shim, no grub, no Secure Boot. */
export async function bootWithVtpm(options: BootOptions = {}): Promise<BootResult> {
  const ovmfCode =
    options.ovmfCode ??
    firstExisting(['/usr/share/OVMF/OVMF_CODE_4M.fd', '/usr/share/OVMF/OVMF_CODE.fd'], 'OVMF');
  const ovmfVars =
    options.ovmfVars ??
    firstExisting(['/usr/share/OVMF/OVMF_VARS_4M.fd', '/usr/share/OVMF/OVMF_VARS.fd'], 'OVMF vars');
  return runVm(options, async (dir, initramfs) => [
    ...firmwareArgs(dir, ovmfCode, ovmfVars, false),
    ...['-kernel', options.kernel ?? defaultKernel(), '-initrd', initramfs],
    ...['-append', DEFAULT_CMDLINE],
  ]);
}

export interface DiskBootOptions extends BootOptions {
  /**
   * On: OVMF's Secure Boot build with Microsoft's keys enrolled (`OVMF_VARS_4M.ms.fd`), SMM and a
   * secure flash. Off: the plain build and empty variables. `ovmfCode`/`ovmfVars` override either.
   */
  secureBoot: boolean;
  /**
   * What grub.cfg passes to the kernel (`linux`, or `linuxefi` with Secure Boot off: see buildEspDisk).
   * Output reaches the host only with `console=ttyS0` in it.
   */
  kernelCmdline?: string;
}

/** Debian's signed boot chain, as the shim-signed and grub-efi-amd64-signed packages install it. */
export const SIGNED_SHIM = '/usr/lib/shim/shimx64.efi.signed';
export const SIGNED_GRUB = '/usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed';

/**
 * Boots like a Debian install does: OVMF starts the removable-media loader \EFI\BOOT\BOOTX64.EFI
 * (Debian's Microsoft-signed shim) from a GPT disk's EFI System Partition; shim verifies and starts
 * grubx64.efi beside it (Debian-signed grub), which reads /EFI/debian/grub.cfg (its built-in prefix)
 * and boots the Debian-signed kernel with the initramfs. Every stage measures into the vTPM.
 */
export async function bootFromDisk(options: DiskBootOptions): Promise<BootResult> {
  const secure = options.secureBoot;
  const ovmfCode = options.ovmfCode ?? ovmfFirmware(secure).code;
  const ovmfVars = options.ovmfVars ?? ovmfFirmware(secure).vars;
  return runVm(options, async (dir, initramfs) => {
    const disk = await buildEspDisk(dir, {
      kernel: options.kernel ?? defaultKernel(),
      initramfs,
      kernelCmdline: options.kernelCmdline ?? DEFAULT_CMDLINE,
      secureBoot: secure,
    });
    return [
      ...firmwareArgs(dir, ovmfCode, ovmfVars, secure),
      ...['-drive', `if=none,id=esp,format=raw,readonly=on,file=${disk}`],
      ...['-device', 'virtio-blk-pci,drive=esp'],
    ];
  });
}

/**
 * OVMF's Secure Boot build with Microsoft's keys enrolled (`OVMF_VARS_4M.ms.fd`), or the plain build
 * with empty variables.
 */
export function ovmfFirmware(secureBoot: boolean): { code: string; vars: string } {
  return secureBoot
    ? {
        code: firstExisting(['/usr/share/OVMF/OVMF_CODE_4M.secboot.fd'], 'OVMF'),
        vars: firstExisting(['/usr/share/OVMF/OVMF_VARS_4M.ms.fd'], 'OVMF vars'),
      }
    : {
        code: firstExisting(['/usr/share/OVMF/OVMF_CODE_4M.fd'], 'OVMF'),
        vars: firstExisting(['/usr/share/OVMF/OVMF_VARS_4M.fd'], 'OVMF vars'),
      };
}

/** qemu's machine and flash arguments for OVMF; the variable store is copied into `dir` first. */
export function firmwareArgs(dir: string, code: string, varsTemplate: string, secure: boolean): string[] {
  // The firmware writes its variable store, so each boot gets its own copy.
  const vars = join(dir, 'OVMF_VARS.fd');
  copyFileSync(varsTemplate, vars);
  return [
    // The Secure Boot build keeps its variables in SMM-protected flash, so it needs SMM and a secure
    // pflash; without them it stops before the boot manager.
    ...['-machine', secure ? 'q35,smm=on' : 'q35'],
    ...(secure ? ['-global', 'driver=cfi.pflash01,property=secure,value=on'] : []),
    ...['-drive', `if=pflash,format=raw,unit=0,readonly=on,file=${code}`],
    ...['-drive', `if=pflash,format=raw,unit=1,file=${vars}`],
  ];
}

function run(cmd: string, args: readonly string[]): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => {
      stderr += d.toString();
    });
    child.on('error', (e) => reject(new Error(`could not run ${cmd}: ${e.message}`)));
    child.on('exit', (code) =>
      code === 0 ? resolve() : reject(new Error(`${cmd} ${args.join(' ')} exited with ${code}: ${stderr}`)),
    );
  });
}

const MIB = 1024 * 1024;
// Fixed GUIDs and volume id: OVMF measures the GPT into PCR5, so the same inputs give the same log.
const DISK_GUID = '1e0b0071-0000-4000-8000-000000000001';
const ESP_GUID = '1e0b0071-0000-4000-8000-000000000002';
const ESP_VOLUME_ID = '1e0b0071';

/**
 * A GPT disk with one EFI System Partition, made without mounting anything: mkfs.vfat makes the FAT
 * image, mtools fill it, sgdisk writes the partition table around it.
 */
async function buildEspDisk(
  dir: string,
  chain: { kernel: string; initramfs: string; kernelCmdline: string; secureBoot: boolean },
): Promise<string> {
  if (/[\n"$`\\]/.test(chain.kernelCmdline)) {
    throw new Error(
      `kernelCmdline must be one line without quotes, $ or backslashes: ${chain.kernelCmdline}`,
    );
  }
  // Debian's `linux` command goes through the kernel's EFI stub (linuxefi) only under Secure Boot;
  // with it off, it jumps past the stub, which is what hands the kernel the firmware's event log,
  // and the guest sees no log. `linuxefi` takes the stub path either way.
  const [linux, initrd] = chain.secureBoot ? ['linux', 'initrd'] : ['linuxefi', 'initrdefi'];
  const grubCfg = join(dir, 'grub.cfg');
  const lines = [
    'set timeout=0',
    `${linux} /vmlinuz ${chain.kernelCmdline}`,
    `${initrd} /initramfs.cpio`,
    'boot',
  ];
  writeFileSync(grubCfg, `${lines.join('\n')}\n`);
  const content = [
    [firstExisting([SIGNED_SHIM], 'signed shim (install shim-signed)'), '::/EFI/BOOT/BOOTX64.EFI'],
    // shim starts grubx64.efi from its own directory.
    [firstExisting([SIGNED_GRUB], 'signed grub (install grub-efi-amd64-signed)'), '::/EFI/BOOT/grubx64.efi'],
    [grubCfg, '::/EFI/debian/grub.cfg'],
    [chain.kernel, '::/vmlinuz'],
    [chain.initramfs, '::/initramfs.cpio'],
  ] as const;
  const bytes = content.reduce((sum, [file]) => sum + statSync(file).size, 0);
  const espMib = Math.max(64, Math.ceil(bytes / MIB) + 16);
  const esp = join(dir, 'esp.img');
  await run('mkfs.vfat', ['-C', '-i', ESP_VOLUME_ID, '-n', 'ESP', esp, String(espMib * 1024)]);
  await run('mmd', ['-i', esp, '::/EFI', '::/EFI/BOOT', '::/EFI/debian']);
  for (const [file, target] of content) await run('mcopy', ['-i', esp, file, target]);

  // 1 MiB before the partition for the protective MBR and primary GPT, 1 MiB after for the backup.
  const disk = join(dir, 'disk.img');
  writeFileSync(disk, Buffer.alloc(0));
  truncateSync(disk, (espMib + 2) * MIB);
  await run('sgdisk', [
    ...['-U', DISK_GUID],
    ...['-n', `1:2048:+${espMib}M`, '-t', '1:ef00', '-u', `1:${ESP_GUID}`, '-c', '1:EFI System Partition'],
    disk,
  ]);
  const fd = openSync(disk, 'r+');
  try {
    const fat = readFileSync(esp);
    writeSync(fd, fat, 0, fat.length, MIB);
  } finally {
    closeSync(fd);
  }
  return disk;
}

/** A swtpm serving qemu's TPM emulator backend over its control socket. */
export interface Vtpm {
  readonly child: ChildProcess;
  readonly ctrl: string;
}

/**
 * Starts swtpm on `stateDir` (created if missing; an empty one is a TPM without EK certificates) with
 * a Unix control socket in it, as qemu's `emulator` TPM backend wants. `--terminate`: it exits when
 * qemu goes away. The caller kills it too (killAndWait), so no path leaves it running.
 */
export async function startVtpm(stateDir: string): Promise<Vtpm> {
  mkdirSync(stateDir, { recursive: true, mode: 0o700 });
  const ctrl = join(stateDir, 'swtpm.sock');
  const child = track(
    spawn(
      'swtpm',
      [
        'socket',
        '--tpm2',
        '--tpmstate',
        `dir=${stateDir}`,
        '--ctrl',
        `type=unixio,path=${ctrl}`,
        '--terminate',
      ],
      {
        stdio: ['ignore', 'ignore', 'pipe'],
      },
    ),
  );
  // Drained so a chatty swtpm can never block on a full pipe; kept for error messages.
  let stderr = '';
  child.stderr?.on('data', (d: Buffer) => {
    stderr += d.toString();
  });
  try {
    await waitForFile(ctrl, 10_000, child);
  } catch (e) {
    await killAndWait(child);
    throw new Error(`${e instanceof Error ? e.message : String(e)}; swtpm said: ${stderr}`);
  }
  return { child, ctrl };
}

/** qemu's arguments for a TPM 2.0 (TIS interface) backed by `vtpm`. */
export function vtpmArgs(vtpm: Vtpm): string[] {
  return [
    ...['-chardev', `socket,id=chrtpm,path=${vtpm.ctrl}`, '-tpmdev', 'emulator,id=tpm0,chardev=chrtpm'],
    ...['-device', 'tpm-tis,tpmdev=tpm0'],
  ];
}

/** Starts swtpm and qemu (with the arguments `bootArgs` gives), and reads the guest's report. */
async function runVm(
  options: BootOptions,
  bootArgs: (dir: string, initramfs: string) => Promise<string[]>,
): Promise<BootResult> {
  const dir = mkdtempSync(join(tmpdir(), 'ironroot-qemu-'));
  const started = Date.now();
  let swtpm: Vtpm | undefined;
  let qemu: ChildProcess | undefined;
  try {
    const initramfs = await buildInitramfs(dir, options.files ?? [], options.commands ?? []);
    const boot = await bootArgs(dir, initramfs);

    swtpm = await startVtpm(join(dir, 'tpm'));
    const args = [
      ...['-accel', 'tcg', '-m', String(options.memoryMb ?? 512), '-nographic', '-no-reboot'],
      ...vtpmArgs(swtpm),
      '-net',
      'none',
      ...boot,
    ];
    const vm = track(spawn('qemu-system-x86_64', args, { stdio: ['ignore', 'pipe', 'pipe'] }));
    qemu = vm;
    let serial = '';
    vm.stdout?.on('data', (d: Buffer) => {
      serial += d.toString('latin1');
    });
    let stderr = '';
    vm.stderr?.on('data', (d: Buffer) => {
      stderr += d.toString();
    });
    const timeoutMs = options.timeoutMs ?? 180_000;
    const code = await new Promise<number | null>((resolve, reject) => {
      const timer = setTimeout(() => {
        vm.kill('SIGKILL');
        reject(
          new Error(`qemu did not power off within ${timeoutMs} ms; serial tail:\n${serial.slice(-3000)}`),
        );
      }, timeoutMs);
      vm.on('error', (e) => {
        clearTimeout(timer);
        reject(e);
      });
      vm.on('exit', (c) => {
        clearTimeout(timer);
        resolve(c);
      });
    });
    if (code !== 0)
      throw new Error(`qemu exited with ${code}: ${stderr}\nserial tail:\n${serial.slice(-3000)}`);
    serial = serial.replace(/\r/g, '');

    const printed = between(serial, 'EVENTLOG');
    const base64 = printed.replace(/\s+/g, '');
    // Without a log, base64's own error lands in this section instead.
    if (!/^[A-Za-z0-9+/]+=*$/.test(base64)) {
      throw new Error(
        `the guest kernel exposes no firmware event log (binary_bios_measurements): ${printed.trim()}`,
      );
    }
    const eventLog = Buffer.from(base64, 'base64');
    const pcrs = new Map<string, Map<number, Buffer>>();
    for (const line of between(serial, 'PCRS').split('\n')) {
      const m = /^(\w+) (\d+) ([0-9A-Fa-f]+)$/.exec(line.trim());
      if (m === null) continue;
      const [, bank = '', pcr = '', hex = ''] = m;
      const values = pcrs.get(bank) ?? new Map<number, Buffer>();
      values.set(Number(pcr), Buffer.from(hex, 'hex'));
      pcrs.set(bank, values);
    }
    return {
      eventLog,
      pcrs,
      commandOutput: between(serial, 'CMD'),
      serial,
      durationMs: Date.now() - started,
    };
  } finally {
    // Waits for both to be gone, so a failed boot leaves no process behind for the next test.
    await Promise.all([qemu, swtpm?.child].flatMap((c) => (c === undefined ? [] : [killAndWait(c)])));
    rmSync(dir, { recursive: true, force: true });
  }
}
