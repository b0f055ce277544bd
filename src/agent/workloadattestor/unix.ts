/**
 * The `unix` workload attestor: who runs the process (uid, gid, supplementary groups, with names
 * from the passwd and group files) and what it runs (path and SHA-256 of its executable).
 *
 * @module
 */
import { createHash } from 'node:crypto';
import { readlinkSync, statSync } from 'node:fs';
import { type FileHandle, open, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { readProcFile } from '../../workload-api/procfs.js';
import type { Selector } from '../../workload-api/provider.js';
import type { WorkloadAttestor } from './attestor.js';

/** Options of {@link UnixAttestor}. */
export interface UnixAttestorOptions {
  /** Where /proc is; default `/proc`. */
  procRoot?: string;
  /** User names come from here; default `/etc/passwd`. */
  passwdPath?: string;
  /** Group names come from here; default `/etc/group`. */
  groupPath?: string;
  /** Hash executables up to this size; larger ones get no `sha256` selector. Default 256 MiB. */
  maxHashBytes?: number;
  /** Reads and hashes an opened executable; default {@link sha256OfFile}. Tests count reads with it. */
  hashFile?: (file: FileHandle) => Promise<string>;
}

/** Uid, gid and supplementary gids of a process from `/proc/<pid>/status`. */
export interface ProcessIds {
  /** Effective uid: the one the kernel checks permissions (and SO_PEERCRED) with. */
  uid: number;
  /** Effective gid. */
  gid: number;
  supplementaryGids: number[];
}

const DEFAULT_MAX_HASH_BYTES = 256 * 1024 * 1024;
/** Executable hashes kept; the least recently used go first. */
const MAX_CACHED_HASHES = 1024;

/** SHA-256 (hex) of an opened file, read from its start through the same descriptor. */
export async function sha256OfFile(file: FileHandle): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of file.createReadStream({ autoClose: false, start: 0 }))
    hash.update(chunk as Buffer);
  return hash.digest('hex');
}

/** Parses the `Uid:`, `Gid:` and `Groups:` lines of `/proc/<pid>/status`. */
export function parseStatus(status: string): ProcessIds {
  // Found with indexOf rather than by splitting into lines: this runs on every Workload API call.
  const field = (name: string): string[] => {
    const prefix = `${name}:`;
    const first = status.startsWith(prefix);
    const at = first ? 0 : status.indexOf(`\n${prefix}`) + 1;
    if (at === 0 && !first) throw new Error(`/proc status has no ${name} line`);
    const end = status.indexOf('\n', at);
    return status
      .slice(at + prefix.length, end === -1 ? undefined : end)
      .trim()
      .split(/\s+/)
      .filter((v) => v !== '');
  };
  const number = (text: string | undefined, name: string): number => {
    const n = Number(text);
    if (text === undefined || !Number.isSafeInteger(n) || n < 0) throw new Error(`/proc status: bad ${name}`);
    return n;
  };
  // Uid:/Gid: list real, effective, saved set and filesystem ids; index 1 is effective.
  return {
    uid: number(field('Uid')[1], 'Uid'),
    gid: number(field('Gid')[1], 'Gid'),
    supplementaryGids: field('Groups').map((g) => number(g, 'Groups')),
  };
}

/** id → name from a passwd(5) or group(5) file (name in field 1, id in field 3). */
function parseNameFile(text: string): Map<number, string> {
  const names = new Map<number, string>();
  for (const line of text.split('\n')) {
    const [name, , id] = line.split(':');
    if (name === undefined || name === '' || id === undefined || !/^[0-9]+$/.test(id)) continue;
    const n = Number(id);
    // The first entry wins, as getpwuid(3) returns it.
    if (!names.has(n)) names.set(n, name);
  }
  return names;
}

/** Identity of a file's current contents: a rewrite in place or a replacement changes it. */
function fileKey(st: { dev: bigint; ino: bigint; size: bigint; mtimeNs: bigint; ctimeNs: bigint }): string {
  return `${st.dev}:${st.ino}:${st.size}:${st.mtimeNs}:${st.ctimeNs}`;
}

/**
 * The id → name map of one passwd or group file, parsed again only when the file changes. Accounts
 * come and go, so every lookup stats the file; only a new (device, inode, size, mtime, ctime) reads
 * and parses it. useradd/groupadd replace the file by rename (new inode); an edit in place changes
 * mtime and ctime.
 */
export class NameFile {
  readonly #path: string;
  #key: string | undefined;
  #names = new Map<number, string>();
  /** A read in flight and the key it was started for: concurrent callers share it. */
  #reading: { key: string; names: Promise<Map<number, string>> } | undefined;

  constructor(path: string) {
    this.#path = path;
  }

  /** The current map; empty when the file is missing or unreadable (ids are still reported). */
  async names(): Promise<Map<number, string>> {
    // A synchronous stat: the account files are local and their inode cached, so it costs a few
    // microseconds, where a round trip through libuv's thread pool costs tens to hundreds on a
    // busy machine, on every attestation. A changed file is still read asynchronously.
    let key: string;
    try {
      key = fileKey(statSync(this.#path, { bigint: true }));
    } catch {
      return new Map();
    }
    if (key === this.#key) return this.#names;
    if (this.#reading?.key !== key) {
      const reading = {
        key,
        // Stat before read: a change between the two leaves a newer map under the older key, and
        // the next stat (with the newer key) reads it again. Never an older map under a newer key.
        names: readFile(this.#path, 'utf8').then(parseNameFile, () => new Map<number, string>()),
      };
      this.#reading = reading;
      reading.names.then((names) => {
        if (this.#reading === reading) this.#reading = undefined;
        this.#key = key;
        this.#names = names;
      });
    }
    return this.#reading.names;
  }
}

/** The selector kind computed only on demand: its lookup reaches the executable's own file system. */
const SHA256_KIND = 'unix:sha256';

/**
 * Selectors: `unix:uid:<n>`, `unix:user:<name>`, `unix:gid:<n>`, `unix:group:<name>`,
 * `unix:supplementary_gid:<n>`, `unix:supplementary_group:<name>`, `unix:path:<exe>`,
 * `unix:sha256:<hex>` (unless omitted: see {@link WorkloadAttestor.onDemand}).
 */
export class UnixAttestor implements WorkloadAttestor {
  readonly type = 'unix';
  /**
   * `unix:path` stays computed: reading the exe link is a path lookup in the kernel's memory. The
   * hash needs a stat of the executable (asynchronous, a thread-pool round trip) even when cached.
   */
  readonly onDemand = [SHA256_KIND];
  readonly #procRoot: string;
  readonly #passwd: NameFile;
  readonly #group: NameFile;
  readonly #maxHashBytes: number;
  readonly #hashFile: (file: FileHandle) => Promise<string>;
  /**
   * By file identity (device, inode, size, mtime, ctime), in least-recently-used order: a file
   * rewritten in place or replaced gets another key, so it is hashed again.
   */
  readonly #hashes = new Map<string, string>();
  /**
   * Hashes being computed, by the same key. On a cold start hundreds of callers may run one
   * executable; they share one read of it instead of each reading it in full.
   */
  readonly #hashing = new Map<string, Promise<string>>();

  constructor(options: UnixAttestorOptions = {}) {
    this.#procRoot = options.procRoot ?? '/proc';
    this.#passwd = new NameFile(options.passwdPath ?? '/etc/passwd');
    this.#group = new NameFile(options.groupPath ?? '/etc/group');
    this.#maxHashBytes = options.maxHashBytes ?? DEFAULT_MAX_HASH_BYTES;
    this.#hashFile = options.hashFile ?? sha256OfFile;
  }

  async attest(pid: number, omit?: ReadonlySet<string>): Promise<Selector[]> {
    const dir = join(this.#procRoot, String(pid));
    const exe = join(dir, 'exe');
    // /proc is rendered by the kernel from memory (the exe link included: reading it never touches
    // the executable's file system), so these reads are synchronous, a few microseconds each
    // instead of a thread-pool round trip. Only the executable's own file system may be slow or
    // hostile (a workload's FUSE mount): #hash reaches it asynchronously.
    const status = readProcFile(join(dir, 'status'));
    const path = readlinkSync(exe);
    const [users, groups] = await Promise.all([this.#passwd.names(), this.#group.names()]);
    const ids = parseStatus(status);
    const selectors: Selector[] = [`unix:uid:${ids.uid}`];
    const user = users.get(ids.uid);
    if (user !== undefined) selectors.push(`unix:user:${user}`);
    selectors.push(`unix:gid:${ids.gid}`);
    const group = groups.get(ids.gid);
    if (group !== undefined) selectors.push(`unix:group:${group}`);
    for (const gid of ids.supplementaryGids) {
      selectors.push(`unix:supplementary_gid:${gid}`);
      const name = groups.get(gid);
      if (name !== undefined) selectors.push(`unix:supplementary_group:${name}`);
    }
    selectors.push(`unix:path:${path}`);
    if (omit?.has(SHA256_KIND)) return selectors;
    const sha256 = await this.#hash(exe);
    if (sha256 !== undefined) selectors.push(`unix:sha256:${sha256}`);
    return selectors;
  }

  /**
   * SHA-256 of the executable, read through the `/proc/<pid>/exe` link: that is the file the
   * process runs even if the path was since replaced or deleted, and it can be opened across mount
   * namespaces. A stat of the link answers from the cache without opening the file: a cached hash
   * was computed from a descriptor whose fstat gave that same key. On a miss the key comes from
   * fstat of the descriptor the bytes are read from, so key and bytes describe the same file.
   */
  async #hash(exe: string): Promise<string | undefined> {
    try {
      const cached = this.#cachedHash(fileKey(await stat(exe, { bigint: true })));
      if (cached !== undefined) return cached;
    } catch {
      // Another user's process with a restrictive ptrace policy: no hash rather than no identity.
      return undefined;
    }
    let file: FileHandle;
    try {
      file = await open(exe, 'r');
    } catch {
      return undefined;
    }
    try {
      const st = await file.stat({ bigint: true });
      if (st.size > BigInt(this.#maxHashBytes)) return undefined;
      const key = fileKey(st);
      const cached = this.#cachedHash(key);
      if (cached !== undefined) return cached;
      let hashing = this.#hashing.get(key);
      if (hashing === undefined) {
        hashing = this.#hashFile(file);
        this.#hashing.set(key, hashing);
        // Settled either way, it is no longer in flight; a failed read is tried again by the next caller.
        hashing.then(
          (sha256) => {
            this.#hashing.delete(key);
            this.#hashes.set(key, sha256);
            if (this.#hashes.size > MAX_CACHED_HASHES) {
              const oldest = this.#hashes.keys().next().value;
              if (oldest !== undefined) this.#hashes.delete(oldest);
            }
          },
          () => this.#hashing.delete(key),
        );
      }
      return await hashing;
    } finally {
      await file.close();
    }
  }

  /** The hash kept for `key`, marked most recently used. */
  #cachedHash(key: string): string | undefined {
    const cached = this.#hashes.get(key);
    if (cached !== undefined) {
      this.#hashes.delete(key);
      this.#hashes.set(key, cached);
    }
    return cached;
  }
}
