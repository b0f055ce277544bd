import { spawnSync } from 'node:child_process';
import type { KeyObject, X509Certificate } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { AgentStore } from '../../src/agent/store.js';
import { assertBuilt, repoRoot } from '../helpers/dist.js';
import { craft, leafExtensions, p256 } from '../helpers/x509.js';

const AGENT_ID = 'spiffe://example.org/ironroot/agent/tpm/0123';

interface Pair {
  cert: X509Certificate;
  key: KeyObject;
}

async function agentSvid(): Promise<Pair> {
  const { privateKey, publicKey } = p256();
  const cert = await craft({
    subject: 'O=ironroot',
    publicKey,
    selfKey: privateKey,
    extensions: leafExtensions(AGENT_ID),
  });
  return { cert, key: privateKey };
}

/** The store writes the sealed cache as it is given; what it holds is the agent's business. */
const SEALED = [Buffer.from('a sealed cache')];

let dir: string;
let store: AgentStore;

beforeEach(() => {
  dir = join(mkdtempSync(join(tmpdir(), 'ironroot-store-')), 'data');
  store = new AgentStore(dir);
  store.prepare();
});

afterEach(() => rmSync(join(dir, '..'), { recursive: true, force: true }));

const certPath = () => join(dir, 'agent-svid.pem');
const keyPath = () => join(dir, 'agent-key.pem');
const pendingPath = () => join(dir, 'agent-svid.pem.tmp');

/** The files a crash between saveSvid's two renames leaves: the new key, the old certificate. */
function crashBetweenRenames(old: Pair | undefined, renewed: Pair): void {
  store.saveSvid([renewed.cert], renewed.key, SEALED);
  renameSync(certPath(), pendingPath());
  if (old) writeFileSync(certPath(), old.cert.toString(), { mode: 0o600 });
}

describe('agent SVID on disk', () => {
  it('reads back what it saved, files 0600', async () => {
    const pair = await agentSvid();
    store.saveSvid([pair.cert], pair.key, SEALED);
    const loaded = store.loadSvid();
    expect(loaded?.spiffeId).toBe(AGENT_ID);
    expect(loaded?.chain[0]?.fingerprint256).toBe(pair.cert.fingerprint256);
    expect(loaded?.chain[0]?.checkPrivateKey(loaded.key)).toBe(true);
    for (const path of [certPath(), keyPath()]) expect(statSync(path).mode & 0o777).toBe(0o600);
    expect(existsSync(pendingPath())).toBe(false);
  });

  it('finishes a renewal a crash stopped between the key and the certificate', async () => {
    const old = await agentSvid();
    const renewed = await agentSvid();
    store.saveSvid([old.cert], old.key, SEALED);
    crashBetweenRenames(old, renewed);
    expect(store.completeSvidSave()).toBe(true);
    expect(store.loadSvid()?.chain[0]?.fingerprint256).toBe(renewed.cert.fingerprint256);
    expect(existsSync(pendingPath())).toBe(false);
    expect(store.completeSvidSave()).toBe(false);
  });

  it("finishes a first attestation's save a crash stopped before the certificate", async () => {
    const first = await agentSvid();
    crashBetweenRenames(undefined, first);
    expect(store.loadSvid()).toBeUndefined();
    expect(store.completeSvidSave()).toBe(true);
    expect(store.loadSvid()?.chain[0]?.fingerprint256).toBe(first.cert.fingerprint256);
  });

  it('keeps the pair in place when the waiting certificate is for another key', async () => {
    const current = await agentSvid();
    const unfinished = await agentSvid();
    store.saveSvid([current.cert], current.key, SEALED);
    // A crash before either rename: the new certificate waits, the new key never replaced the old.
    writeFileSync(pendingPath(), unfinished.cert.toString(), { mode: 0o600 });
    expect(store.completeSvidSave()).toBe(false);
    expect(store.loadSvid()?.chain[0]?.fingerprint256).toBe(current.cert.fingerprint256);
    expect(readFileSync(pendingPath(), 'utf8')).toBe(unfinished.cert.toString());
  });

  it('refuses a key that does not belong to the certificate, naming what to remove', async () => {
    const old = await agentSvid();
    const renewed = await agentSvid();
    store.saveSvid([old.cert], old.key, SEALED);
    crashBetweenRenames(old, renewed);
    rmSync(pendingPath());
    expect(store.completeSvidSave()).toBe(false);
    expect(() => store.loadSvid()).toThrow(
      expect.objectContaining({
        code: 'ERR_AGENT_STATE',
        message: expect.stringMatching(
          /agent key .* does not belong to the stored agent SVID; remove agent-svid\.pem and agent-key\.pem/,
        ),
      }),
    );
  });

  it('forgets a waiting certificate with the SVID, so an evicted identity does not come back', async () => {
    const old = await agentSvid();
    const renewed = await agentSvid();
    store.saveSvid([old.cert], old.key, SEALED);
    crashBetweenRenames(old, renewed);
    store.dropSvid();
    expect(store.completeSvidSave()).toBe(false);
    expect(existsSync(certPath())).toBe(false);
    expect(store.loadSvid()).toBeUndefined();
  });

  it('saves the SVID when the cache cannot be written, returns why, and leaves the cache in place, the part written aside', async () => {
    const old = await agentSvid();
    const renewed = await agentSvid();
    store.saveSvid([old.cert], old.key, [Buffer.from('sealed under the old key')]);
    function* failing(): Generator<Uint8Array> {
      yield Buffer.from('half of a ');
      throw new Error('no space left on device');
    }
    const error = store.saveSvid([renewed.cert], renewed.key, failing());
    expect(error?.message).toBe('no space left on device');
    expect(store.loadSvid()?.chain[0]?.fingerprint256).toBe(renewed.cert.fingerprint256);
    expect(store.loadCache()?.toString()).toBe('sealed under the old key');
    expect(store.loadPendingCache()?.toString()).toBe('half of a ');
  });

  it('keeps a cache a crash left under its temporary name for the agent, and puts it in place when told', async () => {
    const pair = await agentSvid();
    store.saveSvid([pair.cert], pair.key, [Buffer.from('old')]);
    expect(store.loadPendingCache()).toBeUndefined();
    writeFileSync(`${store.cachePath}.tmp`, 'new', { mode: 0o600 });
    expect(store.loadPendingCache()?.toString()).toBe('new');
    expect(store.loadCache()?.toString()).toBe('old');
    store.completeCacheSave();
    expect(store.loadCache()?.toString()).toBe('new');
    expect(store.loadPendingCache()).toBeUndefined();
    expect(statSync(store.cachePath).mode & 0o777).toBe(0o600);
  });

  it('flushes all new files before any replaces the old: the key first, the cache last, then the directory', async () => {
    assertBuilt();
    const pair = await agentSvid();
    const input = join(dir, '..', 'pair.json');
    writeFileSync(
      input,
      JSON.stringify({ cert: pair.cert.toString(), key: pair.key.export({ format: 'pem', type: 'pkcs8' }) }),
    );
    const script = `
      import { readFileSync } from 'node:fs';
      import { createPrivateKey, X509Certificate } from 'node:crypto';
      import { AgentStore } from ${JSON.stringify(pathToFileURL(join(repoRoot, 'dist/agent/store.js')).href)};
      const { cert, key } = JSON.parse(readFileSync(${JSON.stringify(input)}, 'utf8'));
      new AgentStore(${JSON.stringify(dir)}).saveSvid([new X509Certificate(cert)], createPrivateKey(key), [Buffer.from('sealed')]);
    `;
    const trace = join(dir, '..', 'strace.txt');
    const run = spawnSync(
      'strace',
      [
        '-f',
        '-o',
        trace,
        '-e',
        'trace=openat,fsync,rename,renameat,renameat2,close',
        process.execPath,
        '--input-type=module',
        '-e',
        script,
      ],
      { encoding: 'utf8' },
    );
    expect(run.status, run.stderr).toBe(0);
    const events = fileEvents(readFileSync(trace, 'utf8'), dir);
    const key = 'agent-key.pem';
    const svid = 'agent-svid.pem';
    const at = (event: string) => {
      const index = events.indexOf(event);
      expect(index, `${event} in ${events.join(', ')}`).toBeGreaterThanOrEqual(0);
      return index;
    };
    const cache = 'svid-cache.bin';
    const renamedKey = at(`rename ${key}.tmp ${key}`);
    const renamedSvid = at(`rename ${svid}.tmp ${svid}`);
    const renamedCache = at(`rename ${cache}.tmp ${cache}`);
    for (const file of [key, svid, cache]) expect(at(`fsync ${file}.tmp`)).toBeLessThan(renamedKey);
    expect(renamedKey).toBeLessThan(renamedSvid);
    expect(renamedSvid).toBeLessThan(renamedCache);
    expect(events.lastIndexOf('fsync .')).toBeGreaterThan(renamedCache);
  });
});

/**
 * The file operations of an strace log on files in `dir`, in order: `fsync NAME` (NAME the file the
 * descriptor was opened on, `.` for the directory itself) and `rename FROM TO`.
 */
function fileEvents(log: string, dir: string): string[] {
  const open = new Map<string, string>();
  const events: string[] = [];
  const name = (path: string) =>
    path === dir ? '.' : path.startsWith(`${dir}/`) ? path.slice(dir.length + 1) : undefined;
  for (const line of log.split('\n')) {
    const opened = /^(\d+)\s+openat\(AT_FDCWD, "([^"]+)", .*\)\s+= (\d+)$/.exec(line);
    if (opened) {
      const file = name(opened[2] as string);
      if (file !== undefined) open.set(opened[3] as string, file);
      continue;
    }
    const closed = /^(\d+)\s+close\((\d+)\)/.exec(line);
    if (closed) {
      open.delete(closed[2] as string);
      continue;
    }
    const synced = /^(\d+)\s+fsync\((\d+)\)\s+= 0$/.exec(line);
    if (synced) {
      const file = open.get(synced[2] as string);
      if (file !== undefined) events.push(`fsync ${file}`);
      continue;
    }
    const renamed =
      /^(\d+)\s+rename(?:at2?)?\((?:AT_FDCWD, )?"([^"]+)", (?:AT_FDCWD, )?"([^"]+)".*\)\s+= 0$/.exec(line);
    if (renamed) {
      const from = name(renamed[2] as string);
      const to = name(renamed[3] as string);
      if (from !== undefined && to !== undefined) events.push(`rename ${from} ${to}`);
    }
  }
  return events;
}
