/**
 * A throw-away Debian 12 root to install the .deb into: made by `mmdebstrap --mode=root` (minbase plus
 * the packages given) and kept as a tarball in a cache directory, keyed by everything that shapes
 * it, so only the first run downloads. Each test extracts its own copy and removes it afterwards.
 *
 * Node: Debian 12's nodejs is 18, older than the package needs (>= 20.19), and only Debian's mirror
 * is reachable, so the root gets this host's nodejs (NodeSource's) re-packed by `dpkg-repack`,
 * cached by version, and installed from the file.
 */
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

export const CACHE_DIR = '/var/cache/ironroot-test';
const SUITE = 'bookworm';
const MIRROR = 'http://deb.debian.org/debian';

/** Path of a cached root tarball holding minbase and `packages`; made when missing. */
export async function rootTarball(packages: readonly string[]): Promise<string> {
  const sorted = [...new Set(packages)].sort();
  const key = createHash('sha256')
    .update(JSON.stringify([SUITE, 'minbase', MIRROR, sorted]))
    .digest('hex')
    .slice(0, 16);
  const tarball = join(CACHE_DIR, `${SUITE}-minbase-${key}.tar`);
  if (existsSync(tarball)) return tarball;
  mkdirSync(CACHE_DIR, { recursive: true, mode: 0o700 });
  // mmdebstrap picks the output format by the name's ending, so the partial file ends in .tar too.
  const partial = join(CACHE_DIR, `partial-${process.pid}-${SUITE}-minbase-${key}.tar`);
  try {
    await run(
      'mmdebstrap',
      ['--mode=root', '--variant=minbase', `--include=${sorted.join(',')}`, SUITE, partial, MIRROR],
      { maxBuffer: 64 * 1024 * 1024 },
    );
    renameSync(partial, tarball);
  } finally {
    rmSync(partial, { force: true });
  }
  return tarball;
}

/** Path of this host's nodejs package re-packed by dpkg-repack; made when missing. */
export async function repackedNodejs(): Promise<string> {
  // biome-ignore lint/suspicious/noTemplateCurlyInString: dpkg-query's own format syntax
  const { stdout: version } = await run('dpkg-query', ['-W', '-f', '${Version}', 'nodejs']);
  const dir = join(CACHE_DIR, `nodejs-${version.replace(/[^A-Za-z0-9.+~-]/g, '_')}`);
  const deb = () => readdirSync(dir).find((name) => name.endsWith('.deb'));
  if (existsSync(dir)) {
    const found = deb();
    if (found !== undefined) return join(dir, found);
  }
  mkdirSync(CACHE_DIR, { recursive: true, mode: 0o700 });
  const partial = mkdtempSync(join(CACHE_DIR, 'nodejs-partial-'));
  try {
    await run('dpkg-repack', ['nodejs'], { cwd: partial, maxBuffer: 64 * 1024 * 1024 });
    rmSync(dir, { recursive: true, force: true });
    renameSync(partial, dir);
  } finally {
    rmSync(partial, { recursive: true, force: true });
  }
  const found = deb();
  if (found === undefined) throw new Error(`dpkg-repack nodejs left no .deb in ${dir}`);
  return join(dir, found);
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
