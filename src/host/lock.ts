/**
 * One process per data directory. The lock is flock(2) on a file in the directory, taken through
 * koffi and held for the life of the process: the kernel drops it when the process ends, however it
 * ends (kill -9 included), so there is no stale lock to judge and no pid that may have been reused,
 * which pid files and mtime-based lock libraries cannot promise. The file keeps the holder's pid,
 * for the message that names it; it is never deleted, as deleting it would let a second process
 * lock a new file while the first still holds the old one.
 *
 * @module
 */
import { closeSync, ftruncateSync, openSync, readFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import koffi from 'koffi';
import { HostError } from './errors.js';

const LOCK_EX = 2;
const LOCK_NB = 4;
const EWOULDBLOCK = 11;

let flock: ((fd: number, operation: number) => number) | undefined;

function libcFlock(): (fd: number, operation: number) => number {
  if (flock) return flock;
  const call = koffi.load('libc.so.6').func('int flock(int, int)');
  flock = (fd, operation) => Number(call(fd, operation));
  return flock;
}

export interface DirLock {
  /** The lock file. */
  readonly path: string;
  /** Drops the lock (closing the file); the process ending does the same. */
  release(): void;
}

export interface LockOptions {
  /** Config key naming the directory, for messages: `data_dir`. */
  key: string;
  /** Who locks, e.g. `ironroot-server`; also the lock file's name. */
  owner: string;
}

/** The lock file of `owner` in `dir`. */
export function lockFilePath(dir: string, owner: string): string {
  return join(dir, `${owner}.lock`);
}

/**
 * Takes the lock on `dir` (which must exist), or throws `ERR_DATA_DIR_LOCKED` naming the holder's
 * pid when another process has it.
 */
export function lockDir(dir: string, options: LockOptions): DirLock {
  const path = lockFilePath(dir, options.owner);
  let fd: number;
  try {
    fd = openSync(path, 'a+', 0o600);
  } catch (cause) {
    throw new HostError(
      'ERR_DIR_UNUSABLE',
      options.key,
      `${options.key} ${dir} cannot hold the lock file ${path} (${(cause as Error).message}); make the directory writable by this user or choose another ${options.key}`,
      { cause },
    );
  }
  if (libcFlock()(fd, LOCK_EX | LOCK_NB) !== 0) {
    const errno = koffi.errno();
    closeSync(fd);
    if (errno === EWOULDBLOCK) throw lockedError(dir, path, options);
    throw new HostError(
      'ERR_DIR_UNUSABLE',
      options.key,
      `${options.key} ${dir}: cannot lock ${path} (errno ${errno}); choose a local directory for ${options.key}`,
    );
  }
  ftruncateSync(fd, 0);
  writeSync(fd, `${process.pid}\n`);
  let held = true;
  return {
    path,
    release() {
      if (!held) return;
      held = false;
      closeSync(fd);
    },
  };
}

/**
 * Throws `ERR_DATA_DIR_LOCKED` when another process holds the lock on `dir`; changes nothing
 * (`validate`). A missing directory or lock file is not locked.
 */
export function checkDirUnlocked(dir: string, options: LockOptions): void {
  const path = lockFilePath(dir, options.owner);
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch {
    return;
  }
  try {
    if (libcFlock()(fd, LOCK_EX | LOCK_NB) !== 0 && koffi.errno() === EWOULDBLOCK)
      throw lockedError(dir, path, options);
  } finally {
    // Closing drops the lock just taken, if it was.
    closeSync(fd);
  }
}

function lockedError(dir: string, path: string, options: LockOptions): HostError {
  let holder = '';
  try {
    const pid = readFileSync(path, 'utf8').trim();
    if (/^[0-9]+$/.test(pid)) holder = ` (pid ${pid})`;
  } catch {
    // The pid is only a hint for the message.
  }
  return new HostError(
    'ERR_DATA_DIR_LOCKED',
    options.key,
    `${options.key} ${dir} is in use by another ${options.owner}${holder}: it holds ${path}; stop that process, or give this one another ${options.key}`,
  );
}
