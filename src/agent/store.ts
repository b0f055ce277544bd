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
  chmodSync,
  closeSync,
  existsSync,
  fsyncSync,
  openSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { join } from 'node:path';
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
    try {
      const pem = readFileSync(certPath, 'utf8');
      const chain = (pem.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? []).map(
        (block) => new X509Certificate(block),
      );
      const leaf = chain[0];
      if (leaf === undefined) return undefined;
      const uri = /URI:(spiffe:\/\/[^,\s]+)/.exec(leaf.subjectAltName ?? '')?.[1];
      if (uri === undefined) return undefined;
      return {
        spiffeId: uri,
        chain,
        key: createPrivateKey(readFileSync(keyPath)),
        expiresAt: Math.floor(new Date(leaf.validTo).getTime() / 1000),
      };
    } catch (cause) {
      throw new AgentError(
        'ERR_AGENT_STATE',
        `the stored agent SVID in ${this.dir} cannot be read (${(cause as Error).message}); remove ${FILES.svid} and ${FILES.key} to attest again`,
        { cause },
      );
    }
  }

  saveSvid(chain: readonly X509Certificate[], key: KeyObject): void {
    // Key first: a crash between the two writes leaves a key without a certificate, which loadSvid
    // treats as no SVID, never a certificate for a key we no longer have.
    writePrivate(join(this.dir, FILES.key), key.export({ format: 'pem', type: 'pkcs8' }).toString());
    writePrivate(join(this.dir, FILES.svid), chain.map((c) => c.toString()).join(''));
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
    writePrivate(join(this.dir, FILES.bundle), authorities.map((c) => c.toString()).join(''));
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
    writePrivate(
      join(this.dir, FILES.ak),
      JSON.stringify({
        ek: ak.ek,
        private: Buffer.from(ak.privateBlob).toString('base64'),
        public: Buffer.from(ak.publicBlob).toString('base64'),
      }),
    );
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
   * Replaces the sealed cache durably: the new file is on disk (data and rename) before this
   * returns, so what the Workload API is told of next survives a crash; until the rename, the
   * previous file stands whole.
   */
  saveCache(sealed: Iterable<Uint8Array>): void {
    const temporary = `${this.cachePath}.tmp`;
    const fd = openSync(temporary, 'w', 0o600);
    try {
      // A temporary file left by a crash keeps its mode on open: set it again.
      chmodSync(temporary, 0o600);
      // Each piece is written as it is made (see sealCache); a failure part-way leaves the
      // temporary file, never the cache file, half-written.
      for (const piece of sealed) for (let at = 0; at < piece.length; ) at += writeSync(fd, piece, at);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(temporary, this.cachePath);
    const dir = openSync(this.dir, 'r');
    try {
      fsyncSync(dir);
    } finally {
      closeSync(dir);
    }
  }

  /** Forgets the SVID (the server evicted us); the AK stays, a full attestation replaces it. */
  dropSvid(): void {
    rmSync(join(this.dir, FILES.svid), { force: true });
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

/** Writes through a temporary file and rename, so a reader never sees half a file; mode 0600. */
function writePrivate(path: string, content: string): void {
  const temporary = `${path}.tmp`;
  writeFileSync(temporary, content, { mode: 0o600 });
  chmodSync(temporary, 0o600);
  renameSync(temporary, path);
}
