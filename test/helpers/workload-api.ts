import { execFile, spawn } from 'node:child_process';
import type { KeyObject, X509Certificate } from 'node:crypto';
import { chmodSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import type { UnixAttestor } from '../../src/agent/workloadattestor/unix.js';
import {
  createKeySigner,
  mintJwtSvid,
  mintX509Ca,
  mintX509Svid,
  type Signer,
  SpiffeBundle,
  type SpiffeId,
  TrustDomain,
} from '../../src/spiffe/index.js';
import { newKeyPair } from '../../src/spiffe/new-key-pair.js';
import type {
  CallerCredentials,
  Selector,
  WorkloadIdentities,
  WorkloadIdentityProvider,
  X509SvidMaterial,
} from '../../src/workload-api/provider.js';
import { assertBuilt } from './dist.js';

const run = promisify(execFile);

/** An in-memory CA of one trust domain: a real self-signed root and a JWT signing key. */
export class TestCa {
  readonly trustDomain: TrustDomain;
  readonly certificate: X509Certificate;
  readonly signer: Signer;
  readonly jwtSigner: Signer;
  readonly jwtKeyId = 'jwt-key-1';

  private constructor(
    trustDomain: TrustDomain,
    certificate: X509Certificate,
    signer: Signer,
    jwtSigner: Signer,
  ) {
    this.trustDomain = trustDomain;
    this.certificate = certificate;
    this.signer = signer;
    this.jwtSigner = jwtSigner;
  }

  static async create(trustDomain: string): Promise<TestCa> {
    const td = TrustDomain.parse(trustDomain);
    const signer = createKeySigner(newKeyPair('ec', { namedCurve: 'P-256' }).privateKey);
    const now = Date.now();
    const certificate = await mintX509Ca(
      {
        trustDomain: td,
        publicKey: signer.publicKey,
        notBefore: new Date(now - 60_000),
        notAfter: new Date(now + 86_400_000),
      },
      signer,
    );
    const jwtSigner = createKeySigner(newKeyPair('ec', { namedCurve: 'P-256' }).privateKey);
    return new TestCa(td, certificate, signer, jwtSigner);
  }

  /** The SPIFFE bundle: the root for X.509-SVIDs and the JWT key. */
  bundle(): SpiffeBundle {
    return new SpiffeBundle(this.trustDomain, {
      x509Authorities: [this.certificate],
      jwtAuthorities: new Map<string, KeyObject>([[this.jwtKeyId, this.jwtSigner.publicKey]]),
    });
  }

  /** A freshly minted X.509-SVID with a new key. */
  async svid(spiffeId: SpiffeId, hint?: string): Promise<X509SvidMaterial> {
    const { privateKey, publicKey } = newKeyPair('ec', { namedCurve: 'P-256' });
    const now = Date.now();
    const leaf = await mintX509Svid(
      { spiffeId, publicKey, notBefore: new Date(now - 60_000), notAfter: new Date(now + 3_600_000) },
      { certificate: this.certificate, signer: this.signer },
    );
    return {
      spiffeId,
      chainDer: [leaf.raw],
      keyPkcs8Der: privateKey.export({ type: 'pkcs8', format: 'der' }),
      ...(hint === undefined ? {} : { hint }),
    };
  }
}

/** A registration entry: an identity granted to workloads whose selectors include all of `selectors`. */
export interface TestEntry {
  spiffeId: SpiffeId;
  selectors: Selector[];
  hint?: string;
}

/**
 * A provider built from real parts: a real attestor, a real CA and real SVIDs. It stands in for the
 * agent's SVID cache; `rotate`, `setEntries` and `setFederated` change its state and notify streams.
 */
export class TestProvider implements WorkloadIdentityProvider {
  readonly ca: TestCa;
  readonly #attestor: Pick<UnixAttestor, 'attest'>;
  /** One object for as long as its content stays, as the agent's cache keeps it (streams share its encoding). */
  readonly #bundle: SpiffeBundle;
  #entries: TestEntry[] = [];
  #svids = new Map<string, X509SvidMaterial>();
  #federated: SpiffeBundle[] = [];
  readonly #listeners = new Set<() => void>();
  /** Every caller the server asked about, as the kernel reported it. */
  readonly callers: CallerCredentials[] = [];

  constructor(ca: TestCa, attestor: Pick<UnixAttestor, 'attest'>) {
    this.ca = ca;
    this.#attestor = attestor;
    this.#bundle = ca.bundle();
  }

  async setEntries(entries: TestEntry[]): Promise<void> {
    const svids = new Map<string, X509SvidMaterial>();
    for (const e of entries) {
      const existing = this.#svids.get(e.spiffeId.toString());
      const svid = existing === undefined ? await this.ca.svid(e.spiffeId) : existing;
      const { hint: _previous, ...rest } = svid;
      svids.set(e.spiffeId.toString(), e.hint === undefined ? rest : { ...rest, hint: e.hint });
    }
    this.#entries = entries;
    this.#svids = svids;
    this.#notify();
  }

  /** Re-mints every SVID (new keys, new certificates), as the agent's rotation does. */
  async rotate(): Promise<void> {
    const svids = new Map<string, X509SvidMaterial>();
    for (const e of this.#entries) svids.set(e.spiffeId.toString(), await this.ca.svid(e.spiffeId, e.hint));
    this.#svids = svids;
    this.#notify();
  }

  setFederated(bundles: SpiffeBundle[]): void {
    this.#federated = bundles;
    this.#notify();
  }

  svidOf(spiffeId: SpiffeId): X509SvidMaterial | undefined {
    return this.#svids.get(spiffeId.toString());
  }

  attest(caller: CallerCredentials): Promise<readonly Selector[]> {
    this.callers.push(caller);
    return this.#attestor.attest(caller.pid);
  }

  identities(selectors: readonly Selector[]): WorkloadIdentities {
    const have = new Set(selectors);
    const svids = this.#entries
      .filter((e) => e.selectors.every((s) => have.has(s)))
      .map((e) => this.#svids.get(e.spiffeId.toString()))
      .filter((s): s is X509SvidMaterial => s !== undefined);
    return { svids, bundle: this.#bundle, federatedBundles: this.#federated };
  }

  mintJwtSvid(spiffeId: SpiffeId, audience: readonly string[]): Promise<string> {
    return mintJwtSvid(
      { spiffeId, audience, expiresAt: new Date(Date.now() + 300_000), keyId: this.ca.jwtKeyId },
      this.ca.jwtSigner,
    );
  }

  subscribe(listener: () => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  get subscribers(): number {
    return this.#listeners.size;
  }

  #notify(): void {
    for (const l of this.#listeners) l();
  }
}

/** A directory every user can reach (mkdtemp makes 0700), for a socket other uids connect to. */
export function openTempDir(prefix: string): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  chmodSync(dir, 0o755);
  return dir;
}

/** uid and gid of system user `name`, created (`useradd --system`) when missing. */
export async function systemUser(name: string): Promise<{ uid: number; gid: number }> {
  const lookup = async () => {
    const { stdout } = await run('id', ['-u', name]);
    const { stdout: gid } = await run('id', ['-g', name]);
    return { uid: Number(stdout.trim()), gid: Number(gid.trim()) };
  };
  try {
    return await lookup();
  } catch {
    try {
      await run('useradd', [
        '--system',
        '--user-group',
        '--no-create-home',
        '--shell',
        '/usr/sbin/nologin',
        name,
      ]);
    } catch {
      // Another test file may have created it at the same moment; the lookup below decides.
    }
    return lookup();
  }
}

const root = fileURLToPath(new URL('../../', import.meta.url));

/**
 * Fails unless `dist/` is built from the current sources: tests that run the CLI or the package in
 * child processes (as other users) need JavaScript. `npm test` builds first.
 */
export const requireFreshDist: () => void = assertBuilt;

export interface RunResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs `node <args>` from the repository root as `user`, with `input` on stdin. */
export function runNodeAs(
  user: { uid: number; gid: number },
  args: string[],
  input = '',
): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, args, { uid: user.uid, gid: user.gid, cwd: root });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => {
      stdout += d.toString();
    });
    child.stderr.on('data', (d: Buffer) => {
      stderr += d.toString();
    });
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
    child.stdin.end(input);
  });
}

/** The agent executable. */
export const AGENT_BIN = join(root, 'bin/ironroot-agent.js');
