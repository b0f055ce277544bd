/**
 * @module
 * Keys as PKCS#8 PEM files, for development only: the private key sits in the file system in the clear.
 * The directory must be 0700 and each file 0600 (no group or other bits); anything looser is refused
 * rather than repaired, because a key that was readable by others must be treated as exposed.
 */
import { createPrivateKey, type KeyObject } from 'node:crypto';
import { lstat, mkdir, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { HsmError } from './errors.js';
import { notFound, SoftwareKeyManager, type SoftwareKeyStore } from './software.js';

const SUFFIX = '.key.pem';
const LOOSE_BITS = 0o077;

function octal(mode: number): string {
  return (mode & 0o777).toString(8).padStart(4, '0');
}

async function assertPrivateDirectory(dir: string): Promise<void> {
  const stat = await lstat(dir);
  if (!stat.isDirectory()) {
    throw new HsmError(
      'ERR_HSM_FILE_MODE',
      `key directory ${dir} is not a directory (symbolic links are refused)`,
    );
  }
  if ((stat.mode & LOOSE_BITS) !== 0) {
    throw new HsmError(
      'ERR_HSM_FILE_MODE',
      `key directory ${dir} has mode ${octal(stat.mode)}; it must be 0700 (chmod 700 ${dir}), and keys that were in it should be treated as exposed`,
    );
  }
}

class DiskStore implements SoftwareKeyStore {
  readonly #dir: string;
  /**
   * Parsed keys by id with the file identity they came from. Parsing PEM costs far more than signing
   * (hsm-notes C.3), so a key is parsed again only when its file changed; its mode is checked every time.
   */
  readonly #parsed = new Map<
    string,
    { readonly ino: number; readonly mtimeMs: number; readonly key: KeyObject }
  >();

  constructor(dir: string) {
    this.#dir = dir;
  }

  #path(id: string): string {
    return join(this.#dir, `${id}${SUFFIX}`);
  }

  async load(id: string): Promise<KeyObject | undefined> {
    const path = this.#path(id);
    let stat: Awaited<ReturnType<typeof lstat>>;
    try {
      stat = await lstat(path);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw error;
    }
    if (!stat.isFile()) {
      throw new HsmError(
        'ERR_HSM_FILE_MODE',
        `key file ${path} is not a regular file (symbolic links are refused)`,
      );
    }
    if ((stat.mode & LOOSE_BITS) !== 0) {
      throw new HsmError(
        'ERR_HSM_FILE_MODE',
        `key file ${path} has mode ${octal(stat.mode)}; it must be 0600 (chmod 600 ${path}), and the key should be treated as exposed`,
      );
    }
    const cached = this.#parsed.get(id);
    if (cached !== undefined && cached.ino === stat.ino && cached.mtimeMs === stat.mtimeMs) return cached.key;
    const key = createPrivateKey(await readFile(path));
    this.#parsed.set(id, { ino: stat.ino, mtimeMs: stat.mtimeMs, key });
    return key;
  }

  async ids(): Promise<string[]> {
    await assertPrivateDirectory(this.#dir);
    return (await readdir(this.#dir))
      .filter((name) => name.endsWith(SUFFIX))
      .map((name) => name.slice(0, -SUFFIX.length));
  }

  async create(id: string, key: KeyObject): Promise<void> {
    const pem = key.export({ format: 'pem', type: 'pkcs8' });
    try {
      // 'wx' fails if the file exists, so two generators cannot overwrite each other's key.
      await writeFile(this.#path(id), pem, { mode: 0o600, flag: 'wx' });
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'EEXIST') {
        throw new HsmError(
          'ERR_HSM_KEY_EXISTS',
          `key "${id}" already exists in ${this.#dir}; pick another id`,
        );
      }
      throw error;
    }
  }

  async remove(id: string): Promise<void> {
    this.#parsed.delete(id);
    try {
      await rm(this.#path(id));
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') throw notFound(id, `disk (${this.#dir})`);
      throw error;
    }
  }
}

/** Opens (and creates, 0700, if missing) a key directory, refusing one with looser modes. */
export async function openDiskKeyManager(dir: string): Promise<SoftwareKeyManager> {
  try {
    await mkdir(dir, { mode: 0o700 });
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
  }
  await assertPrivateDirectory(dir);
  return new SoftwareKeyManager('disk', new DiskStore(dir));
}
