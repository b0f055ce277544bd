/**
 * A throw-away Debian 12 root to install the .deb into: the cached mmdebstrap tarball and re-packed
 * nodejs of scripts/lib/debroot.mjs (shared with the image build), kept in this helper's own cache
 * directory. Each test extracts its own copy and removes it afterwards.
 */
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { copyFileSync, mkdtempSync, readFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { promisify } from 'node:util';
import * as shared from '../../scripts/lib/debroot.mjs';
import { repoRoot } from './dist.js';

const run = promisify(execFile);

export const CACHE_DIR = '/var/cache/ironroot-test';

/** Path of a cached root tarball holding minbase and `packages`; made when missing. */
export function rootTarball(packages: readonly string[]): Promise<string> {
  return shared.rootTarball(packages, CACHE_DIR);
}

/** Path of this host's nodejs package re-packed by dpkg-repack; made when missing. */
export function repackedNodejs(): Promise<string> {
  return shared.repackedNodejs(CACHE_DIR);
}

export interface Result {
  code: number;
  stdout: string;
  stderr: string;
}

export interface Started {
  readonly child: ChildProcess;
  /** The last 64 KiB of its standard output and error. */
  output(): string;
  /** Resolves to the exit status (null when a signal ended it). */
  readonly exited: Promise<number | null>;
  /** Sends SIGTERM (as systemctl stop does) and resolves to the exit status. */
  stop(): Promise<number | null>;
}

/** The mount points under `dir` (from /proc/self/mounts), deepest first. */
function mountsUnder(dir: string): string[] {
  return readFileSync('/proc/self/mounts', 'utf8')
    .split('\n')
    .map((line) => line.split(' ')[1]?.replace(/\\040/g, ' '))
    .filter((point): point is string => point !== undefined && (point === dir || point.startsWith(`${dir}/`)))
    .sort((a, b) => b.length - a.length);
}

/**
 * An extracted root with /proc and /dev mounted, to chroot into. `remove()` unmounts first and then
 * deletes with `rm --one-file-system`, refusing to delete anything while a mount is left, so the
 * host's /dev can never be reached through the bind mount.
 */
export class DebRoot {
  readonly dir: string;
  readonly #children = new Set<ChildProcess>();

  private constructor(dir: string) {
    this.dir = dir;
  }

  static async extract(tarball: string): Promise<DebRoot> {
    const root = new DebRoot(mkdtempSync(join('/var/tmp', 'ironroot-debroot-')));
    try {
      await run('tar', ['-C', root.dir, '--numeric-owner', '-xf', tarball]);
      await run('mount', ['-t', 'proc', 'proc', join(root.dir, 'proc')]);
      await run('mount', ['--bind', '/dev', join(root.dir, 'dev')]);
    } catch (error) {
      await root.remove();
      throw error;
    }
    return root;
  }

  path(inside: string): string {
    return join(this.dir, inside);
  }

  /** Runs `args` in the root (chroot), to completion; never throws for an exit status. */
  exec(args: readonly string[]): Promise<Result> {
    return new Promise((resolve, reject) => {
      const child = spawn('chroot', [this.dir, ...args], {
        env: chrootEnv(),
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      let stdout = '';
      let stderr = '';
      child.stdout.on('data', (d: Buffer) => {
        stdout += d.toString();
      });
      child.stderr.on('data', (d: Buffer) => {
        stderr += d.toString();
      });
      child.on('error', reject);
      child.on('close', (code, signal) => resolve({ code: code ?? (signal ? 128 : 1), stdout, stderr }));
    });
  }

  /** Like exec, but throws with the command's output unless it exits 0. */
  async must(args: readonly string[]): Promise<Result> {
    const result = await this.exec(args);
    if (result.code !== 0) {
      throw new Error(`chroot ${args.join(' ')} exited ${result.code}:\n${result.stdout}${result.stderr}`);
    }
    return result;
  }

  /** Starts a long-running command in the root; `remove()` stops it if it is still running. */
  start(args: readonly string[]): Started {
    const child = spawn('chroot', [this.dir, ...args], {
      env: chrootEnv(),
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    this.#children.add(child);
    let output = '';
    const collect = (d: Buffer) => {
      output = (output + d.toString()).slice(-64 * 1024);
    };
    child.stdout?.on('data', collect);
    child.stderr?.on('data', collect);
    const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    const stop = () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      return exited;
    };
    return { child, output: () => output, exited, stop };
  }

  /** Stops what was started, unmounts, and deletes the root. Safe to call twice. */
  async remove(): Promise<void> {
    await Promise.all(
      [...this.#children].map(async (child) => {
        if (child.exitCode !== null || child.signalCode !== null) return;
        const gone = new Promise((resolve) => child.once('exit', resolve));
        child.kill('SIGTERM');
        const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
        await gone;
        clearTimeout(timer);
      }),
    );
    for (const point of mountsUnder(this.dir)) {
      await run('umount', [point]).catch(() => run('umount', ['--lazy', point]));
    }
    const left = mountsUnder(this.dir);
    if (left.length > 0) throw new Error(`still mounted, not removing ${this.dir}: ${left.join(', ')}`);
    await run('rm', ['-rf', '--one-file-system', this.dir]);
  }
}

/** A plain environment for commands in the root: nothing of the host's (or vitest's) leaks in. */
function chrootEnv(): NodeJS.ProcessEnv {
  return { PATH: '/usr/sbin:/usr/bin:/sbin:/bin', LANG: 'C.UTF-8', HOME: '/root' };
}

/**
 * The root the package tests install the .deb into, one list so they share one cached tarball: the
 * .deb's Depends (nodejs comes from the re-packed file), systemd for systemd-analyze, softhsm2 for
 * the server's token, the swtpm TCTI for the agent, and what nodejs depends on (python3,
 * ca-certificates). The appliance's first-boot script needs nothing more (blkid and runuser are
 * util-linux, in minbase).
 */
const PACKAGE_ROOT: readonly string[] = [
  'adduser',
  'libtss2-tctildr0',
  'libtss2-tcti-device0',
  'tpm-udev',
  'libtss2-tcti-swtpm0',
  'systemd',
  'softhsm2',
  'python3',
  'ca-certificates',
];

/**
 * A fresh PACKAGE_ROOT with the re-packed nodejs and this checkout's .deb installed by dpkg, as a
 * host would have them. The .deb is built into `out`; its path is returned with the root.
 */
export async function rootWithPackage(out: string): Promise<{ root: DebRoot; deb: string }> {
  const [built, tarball, nodejs] = await Promise.all([
    run(process.execPath, [join(repoRoot, 'scripts/build-deb.mjs'), '--out', out], {
      cwd: repoRoot,
      maxBuffer: 64 * 1024 * 1024,
    }),
    rootTarball(PACKAGE_ROOT),
    repackedNodejs(),
  ]);
  const deb = built.stdout.trim();
  const root = await DebRoot.extract(tarball);
  try {
    for (const file of [nodejs, deb]) copyFileSync(file, root.path(join('tmp', basename(file))));
    await root.must(['dpkg', '-i', `/tmp/${basename(nodejs)}`]);
    await root.must(['dpkg', '-i', `/tmp/${basename(deb)}`]);
  } catch (error) {
    await root.remove();
    throw error;
  }
  return { root, deb };
}
