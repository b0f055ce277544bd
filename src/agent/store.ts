/**
 * What the agent keeps on disk between runs, in its data directory (0700): the agent SVID chain,
 * its private key (0600), the trust bundle learnt at attestation, the AK blobs (0600; they are
 * wrapped by the EK and useless on another TPM, but nobody else needs to read them), and the sealed
 * workload SVID cache (0600, see cachefile.ts).
 *
 * @module
 */
import { createPrivateKey, type KeyObject, X509Certificate } from 'node:crypto';
import {
  closeSync,
  existsSync,
  fchmodSync,
  fsyncSync,
  openSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  writeSync,
} from 'node:fs';
import { dirname, join } from 'node:path';
import { ensureDir } from '../host/index.js';
import type { AkBlobs, EkKind } from '../tpm/index.js';
import { AgentError } from './errors.js';

export interface StoredSvid {
  readonly spiffeId: string;
  /** Leaf first. */
  readonly chain: readonly X509Certificate[];
  readonly key: KeyObject;
  /** Unix seconds. */
  readonly expiresAt: number;
}

export interface StoredAk extends AkBlobs {
  readonly ek: EkKind;
}

const FILES = {
  svid: 'agent-svid.pem',
  key: 'agent-key.pem',
  bundle: 'bundle.pem',
  ak: 'ak.json',
  cache: 'svid-cache.bin',
} as const;

export class AgentStore {
  readonly dir: string;

  constructor(dir: string) {
    this.dir = dir;
  }

  /** Creates the directory 0700, and refuses one that others can read or write. */
  prepare(): void {
    ensureDir(this.dir, 0o700, 'data_dir');
    checkPrivateDir(this.dir);
  }

  loadSvid(): StoredSvid | undefined {
    const certPath = join(this.dir, FILES.svid);
    const keyPath = join(this.dir, FILES.key);
    if (!existsSync(certPath) || !existsSync(keyPath)) return undefined;
    let chain: X509Certificate[];
    let key: KeyObject;
    try {
      chain = readChain(certPath);
      key = createPrivateKey(readFileSync(keyPath));
    } catch (cause) {
      throw new AgentError(
        'ERR_AGENT_STATE',
        `the stored agent SVID in ${this.dir} cannot be read (${(cause as Error).message}); remove ${FILES.svid} and ${FILES.key} to attest again`,
        { cause },
      );
    }
    const leaf = chain[0];
    if (leaf === undefined) return undefined;
    const uri = /URI:(spiffe:\/\/[^,\s]+)/.exec(leaf.subjectAltName ?? '')?.[1];
    if (uri === undefined) return undefined;
    // Caught here, not as an obscure TLS failure on every call to the server.
    if (!leaf.checkPrivateKey(key))
      throw new AgentError(
        'ERR_AGENT_STATE',
        `the stored agent key in ${this.dir} does not belong to the stored agent SVID; remove ${FILES.svid} and ${FILES.key} to attest again`,
      );
    return { spiffeId: uri, chain, key, expiresAt: Math.floor(new Date(leaf.validTo).getTime() / 1000) };
  }

  /**
   * Replaces the SVID and its key, and with them the sealed workload SVID cache (`cache`, sealed
   * under the new key). All three new files are whole on disk before any replaces its old one, and
   * they are renamed key, certificate, cache: a crash between the renames leaves the new key with
   * the new certificate, or the new cache, still under its temporary name. completeSvidSave puts
   * the certificate in place at the next start, and the agent takes the cache from
   * loadPendingCache. The old key is gone by then, so rolling forward is the only way to keep the
   * identity (a join-token agent cannot attest again) and the cache sealed under it.
   *
   * A cache that cannot be written does not stop the SVID's save: its error is returned, and the
   * cache in place is left as it was.
   */
  saveSvid(
    chain: readonly X509Certificate[],
    key: KeyObject,
    cache: Iterable<Uint8Array>,
  ): Error | undefined {
    const keyPath = join(this.dir, FILES.key);
    const certPath = join(this.dir, FILES.svid);
    writeTemporary(keyPath, [key.export({ format: 'pem', type: 'pkcs8' }).toString()]);
    writeTemporary(certPath, [chain.map((c) => c.toString()).join('')]);
    let cacheError: Error | undefined;
    try {
      writeTemporary(this.cachePath, cache);
    } catch (error) {
      // What was written of it stays under the temporary name, which nothing opens whole.
      cacheError = error as Error;
    }
    renameSync(temporaryOf(keyPath), keyPath);
    renameSync(temporaryOf(certPath), certPath);
    if (cacheError === undefined) renameSync(temporaryOf(this.cachePath), this.cachePath);
    syncDir(this.dir);
    return cacheError;
  }

  /**
   * Finishes a saveSvid that a crash stopped between its two renames: the certificate waiting under
   * its temporary name is put in place when it belongs to the stored key and the certificate in
   * place does not. True when it did.
   */
  completeSvidSave(): boolean {
    const keyPath = join(this.dir, FILES.key);
    const certPath = join(this.dir, FILES.svid);
    const pending = temporaryOf(certPath);
    if (!existsSync(pending) || !existsSync(keyPath)) return false;
    let key: KeyObject;
    try {
      key = createPrivateKey(readFileSync(keyPath));
    } catch {
      return false; // loadSvid reports the unreadable key.
    }
    if (!belongsTo(pending, key) || (existsSync(certPath) && belongsTo(certPath, key))) return false;
    renameSync(pending, certPath);
    syncDir(this.dir);
    return true;
  }

  /** The bundle the agent verifies the server with once it has one of its own. */
  get bundlePath(): string {
    return join(this.dir, FILES.bundle);
  }

  loadBundle(): string | undefined {
    const path = join(this.dir, FILES.bundle);
    return existsSync(path) ? readFileSync(path, 'utf8') : undefined;
  }

  saveBundle(authorities: readonly X509Certificate[]): void {
    replaceFile(join(this.dir, FILES.bundle), [authorities.map((c) => c.toString()).join('')]);
  }

  loadAk(): StoredAk | undefined {
    const path = join(this.dir, FILES.ak);
    if (!existsSync(path)) return undefined;
    const parsed = JSON.parse(readFileSync(path, 'utf8')) as { ek: EkKind; private: string; public: string };
    return {
      ek: parsed.ek,
      privateBlob: Buffer.from(parsed.private, 'base64'),
      publicBlob: Buffer.from(parsed.public, 'base64'),
    };
  }

  saveAk(ak: StoredAk): void {
    replaceFile(join(this.dir, FILES.ak), [
      JSON.stringify({
        ek: ak.ek,
        private: Buffer.from(ak.privateBlob).toString('base64'),
        public: Buffer.from(ak.publicBlob).toString('base64'),
      }),
    ]);
  }

  /** Where the sealed workload SVID cache lives. */
  get cachePath(): string {
    return join(this.dir, FILES.cache);
  }

  /** The sealed workload SVID cache; undefined when there is none. */
  loadCache(): Buffer | undefined {
    return existsSync(this.cachePath) ? readFileSync(this.cachePath) : undefined;
  }

  /**
   * A sealed cache left under its temporary name: by a saveSvid a crash stopped before the cache's
   * rename (sealed under the key now stored), or by a saveCache stopped before its rename (which
   * may be cut short). The agent opens it to tell which.
   */
  loadPendingCache(): Buffer | undefined {
    const pending = temporaryOf(this.cachePath);
    return existsSync(pending) ? readFileSync(pending) : undefined;
  }

  /** Puts the pending cache in place (see loadPendingCache), durably. */
  completeCacheSave(): void {
    renameSync(temporaryOf(this.cachePath), this.cachePath);
    syncDir(this.dir);
  }

  /**
   * Replaces the sealed cache durably: the new file is on disk (data and rename) before this
   * returns, so what the Workload API is told of next survives a crash; until the rename, the
   * previous file stands whole. Each piece is written as it is made (see sealCache).
   */
  saveCache(sealed: Iterable<Uint8Array>): void {
    replaceFile(this.cachePath, sealed);
  }

  /** Forgets the SVID (the server evicted us); the AK stays, a full attestation replaces it. */
  dropSvid(): void {
    rmSync(join(this.dir, FILES.svid), { force: true });
    rmSync(temporaryOf(join(this.dir, FILES.svid)), { force: true });
  }
}

/** An existing data directory must be the agent's alone: it holds the agent's key. */
export function checkPrivateDir(dir: string): void {
  let mode: number;
  try {
    mode = statSync(dir).mode & 0o777;
  } catch {
    return; // Missing: prepare() creates it 0700.
  }
  if ((mode & 0o077) !== 0)
    throw new AgentError(
      'ERR_AGENT_CONFIG_UNSAFE',
      `data_dir ${dir} is accessible by others (mode ${mode.toString(8)}); run chmod 700 ${dir}`,
    );
}

/** Replaces `path` durably: the new file is on disk (data and rename) before this returns; mode 0600. */
function replaceFile(path: string, pieces: Iterable<Uint8Array | string>): void {
  writeTemporary(path, pieces);
  renameSync(temporaryOf(path), path);
  syncDir(dirname(path));
}

function temporaryOf(path: string): string {
  return `${path}.tmp`;
}

/**
 * Writes `path`'s temporary file, 0600, and flushes it to disk. A failure part-way leaves the
 * temporary file, never `path`, half-written; a reader never sees half a file.
 */
function writeTemporary(path: string, pieces: Iterable<Uint8Array | string>): void {
  const temporary = temporaryOf(path);
  const fd = openSync(temporary, 'w', 0o600);
  try {
    // A temporary file left by a crash keeps its mode on open: set it again.
    fchmodSync(fd, 0o600);
    for (const piece of pieces) {
      const bytes = typeof piece === 'string' ? Buffer.from(piece) : piece;
      for (let at = 0; at < bytes.length; ) at += writeSync(fd, bytes, at);
    }
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/** Makes the renames in `dir` durable. */
function syncDir(dir: string): void {
  const fd = openSync(dir, 'r');
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

function readChain(path: string): X509Certificate[] {
  const pem = readFileSync(path, 'utf8');
  return (pem.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? []).map(
    (block) => new X509Certificate(block),
  );
}

/** Whether the certificate file's leaf is for `key`; false for a file that does not read. */
function belongsTo(certPath: string, key: KeyObject): boolean {
  try {
    return readChain(certPath)[0]?.checkPrivateKey(key) === true;
  } catch {
    return false;
  }
}
