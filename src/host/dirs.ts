/**
 * Directories with the modes the docs promise. mkdir(2) applies the umask (systemd's UMask=0077
 * would turn a 0755 socket directory into 0700 and lock workloads out), so every directory created
 * here is chmod'ed to its mode; directories that already exist keep theirs.
 *
 * @module
 */
import { accessSync, chmodSync, constants, mkdirSync, statSync } from 'node:fs';
import { dirname } from 'node:path';
import { HostError } from './errors.js';

/**
 * Creates `path` and any missing parents with `mode` exactly, or throws `ERR_DIR_UNUSABLE` naming
 * `key` when it cannot.
 */
export function ensureDir(path: string, mode: number, key: string): void {
  const missing: string[] = [];
  for (let dir = path; !exists(dir); dir = dirname(dir)) {
    missing.unshift(dir);
    if (dirname(dir) === dir) break;
  }
  try {
    for (const dir of missing) {
      mkdirSync(dir, { mode });
      chmodSync(dir, mode);
    }
  } catch (cause) {
    throw unusable(path, key, (cause as Error).message, cause);
  }
  checkDirUsable(path, key);
}

/**
 * Throws `ERR_DIR_UNUSABLE` unless `path` is a directory this process may write in, or could be
 * created (its nearest existing parent is such a directory). Creates nothing (`validate`).
 */
export function checkDirUsable(path: string, key: string): void {
  let dir = path;
  while (!exists(dir) && dirname(dir) !== dir) dir = dirname(dir);
  let isDirectory: boolean;
  try {
    isDirectory = statSync(dir).isDirectory();
  } catch (cause) {
    throw unusable(path, key, (cause as Error).message, cause);
  }
  if (!isDirectory) throw unusable(path, key, `${dir} is not a directory`);
  try {
    accessSync(dir, constants.W_OK | constants.X_OK);
  } catch (cause) {
    throw unusable(path, key, `${dir} is not writable by this user`, cause);
  }
}

/**
 * The first directory on the way to `path` (`/` first) that other users may not traverse
 * (no o+x), or undefined when everyone can reach `path`'s directory.
 */
export function closedToOthers(path: string): string | undefined {
  const dirs: string[] = [];
  for (let dir = dirname(path); ; dir = dirname(dir)) {
    dirs.unshift(dir);
    if (dirname(dir) === dir) break;
  }
  for (const dir of dirs) {
    try {
      if ((statSync(dir).mode & 0o001) === 0) return dir;
    } catch {
      return undefined; // Missing from here on: created 0755 when the socket is bound.
    }
  }
  return undefined;
}

function exists(path: string): boolean {
  try {
    statSync(path);
    return true;
  } catch {
    return false;
  }
}

function unusable(path: string, key: string, reason: string, cause?: unknown): HostError {
  return new HostError(
    'ERR_DIR_UNUSABLE',
    key,
    `${key} ${path} cannot be used: ${reason}; create it writable for this user, or choose another ${key}`,
    { cause },
  );
}
