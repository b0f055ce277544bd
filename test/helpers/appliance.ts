/**
 * Boots the appliance disk image (scripts/build-image.mjs) under qemu (TCG) and OVMF, with Secure
 * Boot on or off, a swtpm vTPM whose EK certificates the test's server trusts, a config disk for the
 * image's first-boot step, a user network whose only way out is the host server's port, and the
 * QEMU guest agent to run commands in the guest. The image is attached with `snapshot=on`: the guest's
 * writes go to a deleted temporary file, never to the image.
 *
 * @example
 *   const vm = await bootAppliance({ image, secureBoot: true, tpmState, serverPort, config });
 *   const [line] = await vm.waitFor(/ironroot-firstboot: .*\n/, 300_000);
 *   const { stdout } = await (await vm.qga()).exec('systemctl is-active ironroot-agent');
 *   await vm.stop();
 */
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { repoRoot } from './dist.js';
import { firmwareArgs, killAndWait, ovmfFirmware, startVtpm, track, type Vtpm, vtpmArgs } from './qemu.js';
import { GuestAgent } from './qga.js';

const exec = promisify(execFile);

/** Where the guest finds the host's server: qemu's user network forwards this address, and only this. */
export const GUEST_SERVER_ADDRESS = '10.0.2.100:8081';

export interface ApplianceOptions {
  /** The raw disk image; never written. */
  image: string;
  secureBoot: boolean;
  /** A swtpm state directory (manufactureTpm); the TPM keeps its state there across boots. */
  tpmState: string;
  /** The host server's agent API port on 127.0.0.1, reached from the guest at GUEST_SERVER_ADDRESS. */
  serverPort: number;
  /** Files for the config disk (vfat labelled IRONROOT): name → content, e.g. agent.yaml, bundle.pem. */
  config: Record<string, string>;
  /**
   * Guest memory; default 1024 MiB, as the image's build boots it. OVMF's PCR 0 measurements depend on
   * it (a firmware blob's digest changes with the memory size), so the image's profile fits only a
   * boot with the build's size.
   */
  memoryMb?: number;
}

export interface Appliance {
  /** Everything the guest wrote on its serial console so far (firmware, kernel, journal). */
  serial(): string;
  /**
   * Resolves with the first match of `pattern` in the console output after offset `from` (default:
   * the start); fails after `timeoutMs`, or when qemu exits, with the console's tail. Output arrives
   * in pieces: end the pattern with `\n` to match only whole lines.
   */
  waitFor(pattern: RegExp, timeoutMs: number, from?: number): Promise<RegExpExecArray>;
  /** The guest agent, once it answers (connects on first use). */
  qga(timeoutMs?: number): Promise<GuestAgent>;
  /** Kills qemu and swtpm, waits for both, and deletes the boot's temporary files. Safe twice. */
  stop(): Promise<void>;
}

/** A FAT filesystem (no partition table) labelled IRONROOT holding `files`, made without mounting. */
async function configDisk(dir: string, files: Record<string, string>): Promise<string> {
  const disk = join(dir, 'config.img');
  await exec('mkfs.vfat', ['-C', '-n', 'IRONROOT', disk, String(8 * 1024)]);
  for (const [name, content] of Object.entries(files)) {
    const file = join(dir, `config-${name}`);
    writeFileSync(file, content, { mode: 0o600 });
    await exec('mcopy', ['-i', disk, file, `::/${name}`]);
  }
  return disk;
}

function tail(text: string): string {
  return text.slice(-4000);
}

export async function bootAppliance(options: ApplianceOptions): Promise<Appliance> {
  const dir = mkdtempSync(join(tmpdir(), 'ironroot-appliance-'));
  let vtpm: Vtpm | undefined;
  let qemu: ChildProcess | undefined;
  let guestAgent: GuestAgent | undefined;
  let stopped: Promise<void> | undefined;
  const stop = (): Promise<void> => {
    stopped ??= (async () => {
      guestAgent?.close();
      await Promise.all([qemu, vtpm?.child].flatMap((c) => (c === undefined ? [] : [killAndWait(c)])));
      rmSync(dir, { recursive: true, force: true });
    })();
    return stopped;
  };
  try {
    const disk = await configDisk(dir, options.config);
    vtpm = await startVtpm(options.tpmState);
    const { code, vars } = ovmfFirmware(options.secureBoot);
    const qgaSocket = join(dir, 'qga.sock');
    const relay = join(repoRoot, 'test', 'helpers', 'guestfwd-relay.mjs');
    const [guestIp, guestPort] = GUEST_SERVER_ADDRESS.split(':');
    const args = [
      ...['-accel', 'tcg', '-smp', '2', '-m', String(options.memoryMb ?? 1024), '-nographic', '-no-reboot'],
      ...firmwareArgs(dir, code, vars, options.secureBoot),
      ...vtpmArgs(vtpm),
      ...['-drive', `if=none,id=root,format=raw,snapshot=on,file=${options.image}`],
      ...['-device', 'virtio-blk-pci,drive=root,bootindex=0'],
      ...['-drive', `if=none,id=config,format=raw,readonly=on,file=${disk}`],
      ...['-device', 'virtio-blk-pci,drive=config'],
      // restrict=on: the guest reaches nothing but the forward below (no host, no internet).
      ...[
        '-netdev',
        `user,id=n0,restrict=on,guestfwd=tcp:${guestIp}:${guestPort}-cmd:${process.execPath} ${relay} ${options.serverPort}`,
      ],
      ...['-device', 'virtio-net-pci,netdev=n0'],
      ...['-chardev', `socket,path=${qgaSocket},server=on,wait=off,id=qga0`],
      ...['-device', 'virtio-serial', '-device', 'virtserialport,chardev=qga0,name=org.qemu.guest_agent.0'],
    ];
    // snapshot=on keeps the guest's writes in a temporary file qemu deletes at once; in our directory.
    const vm = track(
      spawn('qemu-system-x86_64', args, {
        stdio: ['ignore', 'pipe', 'pipe'],
        env: { ...process.env, TMPDIR: dir },
      }),
    );
    qemu = vm;
    let serial = '';
    let stderr = '';
    const listeners = new Set<() => void>();
    const notify = () => {
      for (const listener of listeners) listener();
    };
    vm.stdout?.on('data', (d: Buffer) => {
      serial += d.toString('latin1').replace(/\r/g, '');
      notify();
    });
    vm.stderr?.on('data', (d: Buffer) => {
      stderr += d.toString();
    });
    vm.on('exit', notify);
    vm.on('error', (e) => {
      stderr += `could not start qemu: ${e.message}`;
      notify();
    });

    const waitFor = (pattern: RegExp, timeoutMs: number, from = 0): Promise<RegExpExecArray> =>
      new Promise((resolve, reject) => {
        const flags = pattern.flags.replace('g', '');
        let timer: NodeJS.Timeout | undefined;
        const check = () => {
          const match = new RegExp(pattern.source, flags).exec(serial.slice(from));
          const exited = vm.exitCode !== null || vm.signalCode !== null;
          if (match === null && !exited) return;
          listeners.delete(check);
          clearTimeout(timer);
          if (match !== null) resolve(match);
          else
            reject(
              new Error(
                `qemu exited (${vm.exitCode ?? vm.signalCode}) before the console showed ${pattern}: ${stderr}\nserial tail:\n${tail(serial)}`,
              ),
            );
        };
        timer = setTimeout(() => {
          listeners.delete(check);
          reject(
            new Error(
              `the console did not show ${pattern} within ${timeoutMs} ms; serial tail:\n${tail(serial)}`,
            ),
          );
        }, timeoutMs);
        listeners.add(check);
        check();
      });

    return {
      serial: () => serial,
      waitFor,
      async qga(timeoutMs = 300_000) {
        guestAgent ??= await GuestAgent.connect(qgaSocket, timeoutMs);
        return guestAgent;
      },
      stop,
    };
  } catch (error) {
    await stop();
    throw error;
  }
}

/** What scripts/build-image.mjs prints (absolute paths). */
export interface BuiltImage {
  image: string;
  /** The firmware profile learnt from the image's own first boot. */
  profile: string;
  eventLog: string;
  manifest: string;
  inputsHash: string;
}

/**
 * Runs this checkout's scripts/build-image.mjs for `variant` and returns what it printed. The build
 * caches by the hash of its inputs, so an unchanged tree answers quickly; a fresh one takes long.
 */
export function buildImage(variant: 'agent' | 'server'): Promise<BuiltImage> {
  return new Promise((resolve, reject) => {
    const child = spawn(
      process.execPath,
      [join(repoRoot, 'scripts', 'build-image.mjs'), '--variant', variant],
      {
        cwd: repoRoot,
        stdio: ['ignore', 'pipe', 'pipe'],
      },
    );
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => {
      stdout += d.toString();
    });
    child.stderr.on('data', (d: Buffer) => {
      stderr += d.toString();
    });
    child.on('error', reject);
    child.on('exit', (code) => {
      const line = stdout.trim().split('\n').at(-1) ?? '';
      if (code !== 0 || !line.startsWith('{')) {
        reject(
          new Error(`scripts/build-image.mjs --variant ${variant} exited with ${code}:\n${tail(stderr)}`),
        );
        return;
      }
      resolve(JSON.parse(line) as BuiltImage);
    });
  });
}

/**
 * A writable copy of `image` (sparse) in `dir` whose /EFI/debian/grub.cfg on the ESP (partition 1,
 * at 1 MiB) is `edit`ed, changed with mtools and nothing mounted. Fails when the edit changes nothing.
 */
export async function imageWithGrubCfg(
  image: string,
  dir: string,
  edit: (grubCfg: string) => string,
): Promise<string> {
  const copy = join(dir, 'edited.raw');
  await exec('cp', ['--sparse=always', image, copy]);
  await exec('chmod', ['0600', copy]);
  const esp = `${copy}@@1M`;
  const cfg = join(dir, 'grub.cfg');
  await exec('mcopy', ['-n', '-i', esp, '::/EFI/debian/grub.cfg', cfg]);
  const before = readFileSync(cfg, 'utf8');
  const after = edit(before);
  if (after === before) throw new Error(`the edit changed nothing in grub.cfg:\n${before}`);
  writeFileSync(cfg, after);
  await exec('mcopy', ['-o', '-i', esp, cfg, '::/EFI/debian/grub.cfg']);
  return copy;
}
