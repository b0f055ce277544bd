import { execFile } from 'node:child_process';
import { createHash, createPrivateKey, type KeyObject, X509Certificate } from 'node:crypto';
import {
  chownSync,
  copyFileSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openCache } from '../../src/agent/cachefile.js';
import { EV } from '../../src/tpm/index.js';
import {
  healthy,
  startAttestServer,
  startTestAgent,
  TD,
  type TestAgent,
  type TestServer,
  until,
} from '../attestation/harness.js';
import { type Swtpm, startSwtpm } from '../helpers/swtpm.js';
import { requireFreshDist, runNodeAs, systemUser } from '../helpers/workload-api.js';
import { agileLog } from '../tpm/eventlog/build-log.js';
import { api, entry, workloadSocketPath, workloadWhere, type X509Json } from '../workload/harness.js';

const exec = promisify(execFile);

type User = { uid: number; gid: number };

let server: TestServer;
let alice: User;
let bob: User;
let carol: User;
const swtpms: Swtpm[] = [];
const agents: TestAgent[] = [];

beforeAll(async () => {
  requireFreshDist();
  alice = await systemUser('ironroot-wl-a');
  bob = await systemUser('ironroot-wl-b');
  carol = await systemUser('ironroot-wl-c');
  // Re-quotes every 2 s, for the untrusted node below.
  server = await startAttestServer({
    tpm_attestation: { measured_boot: 'none', ek_trust: 'any', reattest_interval: '2s' },
  });
}, 60_000);

afterAll(async () => {
  for (const agent of agents) await agent.stop();
  await server?.stop();
  for (const swtpm of swtpms) await swtpm.stop();
});

async function tpmAgent(extra: Record<string, string> = {}): Promise<{ agent: TestAgent; agentId: string }> {
  const swtpm = await startSwtpm();
  swtpms.push(swtpm);
  const agent = await startTestAgent(server, {
    tcti: swtpm.tcti,
    socket_path: workloadSocketPath(),
    sync_interval: '200ms',
    ...extra,
  });
  agents.push(agent);
  return { agent, agentId: (await until('the agent to attest', () => healthy(agent))).spiffe_id };
}

const cacheFile = (agent: TestAgent) => join(agent.dataDir, 'svid-cache.bin');
const agentKey = (agent: TestAgent): KeyObject =>
  createPrivateKey(readFileSync(join(agent.dataDir, 'agent-key.pem')));

/**
 * `ironroot-agent api fetch x509 --write` as `user`: the IDs it got (sorted), and the leaf and key
 * of the SVID for `id`.
 */
async function fetchAs(user: User, agent: TestAgent, id: string) {
  const dir = mkdtempSync(join(tmpdir(), 'ironroot-fetch-'));
  chownSync(dir, user.uid, user.gid);
  const result = await api(
    user,
    agent.config.socket_path ?? '',
    'fetch',
    'x509',
    '--output',
    'json',
    '--write',
    dir,
  );
  expect(result.stderr).toBe('');
  const ids = (JSON.parse(result.stdout) as X509Json).svids.map((s) => s.spiffe_id);
  const i = ids.indexOf(id);
  expect(i).toBeGreaterThanOrEqual(0);
  const leaf = new X509Certificate(readFileSync(join(dir, `svid.${i}.pem`)));
  const keyDer = createPrivateKey(readFileSync(join(dir, `svid.${i}.key`))).export({
    format: 'der',
    type: 'pkcs8',
  });
  rmSync(dir, { recursive: true });
  return { ids: ids.sort(), leaf, keyDer };
}

/** What the package's own client reports to `user`: "ok" or the error code. */
async function outcomeFor(user: User, agent: TestAgent): Promise<string> {
  const script = [
    "import { WorkloadApiClient } from 'ironroot/workload-api';",
    `const client = new WorkloadApiClient({ address: 'unix://${agent.config.socket_path}' });`,
    'try { await client.fetchX509Context(); console.log("ok"); } catch (e) { console.log(e.code); }',
    'client.close();',
  ].join('\n');
  const run = await runNodeAs(user, ['--input-type=module', '-e', script]);
  expect(run.stderr).toBe('');
  return run.stdout.trim();
}

/** The agent's Workload API listens (it serves a restored cache before any sync). */
function listening(agent: TestAgent): Promise<true> {
  return until('the Workload API to listen', () =>
    agent.agent.status().workload?.socket_path ? true : undefined,
  );
}

/** Restarts the agent; returns its log lines of the new run, as they come. */
async function restart(agent: TestAgent): Promise<() => Record<string, unknown>[]> {
  const from = agent.logs.lines.length;
  await agent.start();
  return () => agent.logs.lines.slice(from);
}

/** The first line whose message starts with `msg`. */
function logged(lines: Record<string, unknown>[], msg: string): Record<string, unknown> {
  const line = lines.find((l) => typeof l.msg === 'string' && l.msg.startsWith(msg));
  if (line === undefined)
    throw new Error(`no log line "${msg}" in:\n${lines.map((l) => JSON.stringify(l)).join('\n')}`);
  return line;
}

/**
 * docs/agent-config.md "The persisted SVID cache": an agent restarted while the server is away
 * serves the workload SVIDs it held, still valid, from `svid-cache.bin`, sealed under its key.
 */
describe('the persisted SVID cache (real server, swtpm agent, workloads as other uids)', () => {
  let agent: TestAgent;
  let sealed: Buffer;
  let aliceBefore: Awaited<ReturnType<typeof fetchAs>>;
  const aliceId = `spiffe://${TD}/cache/alice`;
  const shortId = `spiffe://${TD}/cache/alice-short`;
  const bobId = `spiffe://${TD}/cache/bob`;

  beforeAll(async () => {
    let agentId: string;
    ({ agent, agentId } = await tpmAgent());
    const ds = server.server.datastore;
    await ds.createEntry(entry('/cache/alice', agentId, [`unix:uid:${alice.uid}`]), 'test');
    // Short-lived: it expires while the agent is down, and must not be served after.
    await ds.createEntry(
      entry('/cache/alice-short', agentId, [`unix:uid:${alice.uid}`], { x509SvidTtl: 4 }),
      'test',
    );
    await ds.createEntry(entry('/cache/bob', agentId, [`unix:uid:${bob.uid}`]), 'test');
    await workloadWhere(agent, 'three SVIDs in the cache', (w) => w.svids === 3);
  }, 120_000);

  it('a restarted agent serves each workload the same still-valid SVID while the server is down, and not one that expired', async () => {
    aliceBefore = await fetchAs(alice, agent, aliceId);
    expect(aliceBefore.ids).toEqual([aliceId, shortId]);
    const bobBefore = await fetchAs(bob, agent, bobId);
    expect(bobBefore.ids).toEqual([bobId]);

    await agent.stop();
    await server.down();
    sealed = readFileSync(cacheFile(agent));
    // The short SVID (rotated at half-life until the stop) expires before the agent comes back.
    const persisted = openCache(sealed, agentKey(agent), cacheFile(agent)).cache;
    const shortEntry = persisted.entries.find((e) => e.spiffe_id === shortId);
    const short = persisted.svids.find((s) => s.entry_id === shortEntry?.id);
    expect(short).toBeDefined();
    expect(persisted.svids).toHaveLength(3);
    await until('the short SVID to expire', () =>
      Date.now() > (short?.expires_at ?? 0) * 1000 ? true : undefined,
    );

    const lines = await restart(agent);
    await listening(agent);
    expect(logged(lines(), 'serving the persisted SVID cache until the server is reached')).toMatchObject({
      entries: 3,
      svids: 2,
      expired: 1,
      unverified: 0,
    });
    const aliceAfter = await fetchAs(alice, agent, aliceId);
    expect(aliceAfter.ids).toEqual([aliceId]);
    expect(aliceAfter.leaf.serialNumber).toBe(aliceBefore.leaf.serialNumber);
    expect(aliceAfter.keyDer.equals(aliceBefore.keyDer)).toBe(true);
    const bobAfter = await fetchAs(bob, agent, bobId);
    expect(bobAfter.ids).toEqual([bobId]);
    expect(bobAfter.leaf.serialNumber).toBe(bobBefore.leaf.serialNumber);
    // carol has no entry: nothing from the file is hers.
    expect(await outcomeFor(carol, agent)).toBe('ERR_WORKLOADAPI_PERMISSION_DENIED');
    expect(agent.agent.status()).toMatchObject({ last_sync_at: null, workload: { entries: 3, svids: 2 } });
  });

  it('keeps the file 0600 in the 0700 data dir, with no private key in it in clear', () => {
    expect(statSync(cacheFile(agent)).mode & 0o777).toBe(0o600);
    expect(statSync(agent.dataDir).mode & 0o777).toBe(0o700);
    const bytes = readFileSync(cacheFile(agent));
    expect(bytes.includes(aliceBefore.keyDer)).toBe(false);
    expect(bytes.includes(Buffer.from(aliceBefore.keyDer.toString('base64')))).toBe(false);
    expect(bytes.includes('PRIVATE KEY')).toBe(false);
    // Nor the certificates: a copy of the file tells nothing of the workloads.
    expect(bytes.includes(aliceBefore.leaf.raw)).toBe(false);
    expect(bytes.includes(aliceId)).toBe(false);
  });

  it('refuses a file with one byte flipped, with ERR_AGENT_CACHE_INVALID naming it, and serves nothing from it', async () => {
    await agent.stop();
    const tampered = Buffer.from(sealed);
    const at = Math.floor(tampered.length / 2);
    tampered[at] = (tampered[at] ?? 0) ^ 0x01;
    writeFileSync(cacheFile(agent), tampered);
    const lines = await restart(agent);
    await listening(agent);
    const warn = logged(lines(), 'the persisted SVID cache is refused');
    expect(warn).toMatchObject({ level: 'warn', reason: 'ERR_AGENT_CACHE_INVALID', path: cacheFile(agent) });
    expect(String(warn.err_message)).toContain(cacheFile(agent));
    expect(agent.agent.status().workload).toMatchObject({ entries: 0, svids: 0 });
    expect(await outcomeFor(alice, agent)).toBe('ERR_WORKLOADAPI_PERMISSION_DENIED');
    // Refused, not replaced: nothing was learnt since that is worth writing.
    expect(readFileSync(cacheFile(agent)).equals(tampered)).toBe(true);
  });

  it('refuses a file sealed under another agent’s key, at info, and serves nothing from it', async () => {
    await agent.stop();
    // Another agent (its own key), whose cache file is copied over this one's.
    await server.up();
    const other = await tpmAgent();
    await other.agent.stop();
    await server.down();
    copyFileSync(cacheFile(other.agent), cacheFile(agent));
    // Nor one waiting under the temporary name, as a crash during a renewal's save leaves it.
    copyFileSync(cacheFile(other.agent), `${cacheFile(agent)}.tmp`);
    const lines = await restart(agent);
    await listening(agent);
    const info = logged(lines(), 'the persisted SVID cache is of another agent key: discarded');
    expect(String(info.err_message)).toContain(`${cacheFile(agent)} was written under another agent key`);
    expect(info).toMatchObject({
      level: 'info',
      reason: 'ERR_AGENT_CACHE_FOREIGN_KEY',
      path: cacheFile(agent),
    });
    expect(agent.agent.status().workload).toMatchObject({ entries: 0, svids: 0 });
    expect(await outcomeFor(alice, agent)).toBe('ERR_WORKLOADAPI_PERMISSION_DENIED');
    expect(lines().some((l) => String(l.msg).startsWith('finished saving the SVID cache'))).toBe(false);
    rmSync(`${cacheFile(agent)}.tmp`);
  });

  it('refuses a file of another format version with ERR_AGENT_CACHE_VERSION, and serves nothing from it', async () => {
    await agent.stop();
    // The version byte follows the 4-byte magic; it is also bound into the key derivation.
    const other = Buffer.from(sealed);
    other[4] = 2;
    writeFileSync(cacheFile(agent), other);
    const lines = await restart(agent);
    await listening(agent);
    const warn = logged(lines(), 'the persisted SVID cache is refused');
    expect(warn).toMatchObject({ level: 'warn', reason: 'ERR_AGENT_CACHE_VERSION', path: cacheFile(agent) });
    expect(String(warn.err_message)).toMatch(/format version 2, this agent reads version 1/);
    expect(agent.agent.status().workload).toMatchObject({ entries: 0, svids: 0 });
    expect(await outcomeFor(alice, agent)).toBe('ERR_WORKLOADAPI_PERMISSION_DENIED');
  });

  it('serves the intact file again once it is back', async () => {
    await agent.stop();
    writeFileSync(cacheFile(agent), sealed);
    await restart(agent);
    await listening(agent);
    const again = await fetchAs(alice, agent, aliceId);
    expect(again.leaf.serialNumber).toBe(aliceBefore.leaf.serialNumber);
    await agent.stop();
    await server.up();
  });

  it('logs a cache write that fails with ERR_AGENT_CACHE_WRITE, and keeps serving', async () => {
    // A directory where the temporary file must go: the write fails, as on a full or broken disk.
    mkdirSync(`${cacheFile(agent)}.tmp`);
    try {
      const lines = await restart(agent);
      const agentId = (await until('the agent to sync', () => healthy(agent))).spiffe_id;
      await server.server.datastore.createEntry(
        entry('/cache/alice-new', agentId, [`unix:uid:${alice.uid}`]),
        'test',
      );
      await workloadWhere(agent, 'the new SVID in the cache', (w) => w.svids === 4);
      const warn = await until('the failed write to be logged', () =>
        lines().find((l) => l.reason === 'ERR_AGENT_CACHE_WRITE'),
      );
      expect(warn).toMatchObject({ level: 'warn', path: cacheFile(agent) });
      expect(String(warn.msg)).toMatch(/^cannot persist the SVID cache/);
      expect((await fetchAs(alice, agent, `spiffe://${TD}/cache/alice-new`)).ids).toContain(
        `spiffe://${TD}/cache/alice-new`,
      );
    } finally {
      await agent.stop();
      rmSync(`${cacheFile(agent)}.tmp`, { recursive: true });
    }
  });
});

describe('the persisted SVID cache of a node the server holds untrusted', () => {
  const firmwareEvent = Buffer.from('SecureBoot=1', 'utf8');
  const driftEvent = Buffer.from('a measurement nobody logged', 'utf8');

  it('an agent restarted after its node became untrusted stays untrusted and serves nothing', async () => {
    const swtpm = await startSwtpm();
    swtpms.push(swtpm);
    const extend = (data: Buffer) =>
      exec('tpm2_pcrextend', [`7:sha256=${createHash('sha256').update(data).digest('hex')}`], {
        env: { ...process.env, TPM2TOOLS_TCTI: swtpm.tcti },
      });
    // What firmware would do: measure an event into PCR 7 and log it.
    await extend(firmwareEvent);
    const logFile = join(mkdtempSync(join(tmpdir(), 'ironroot-log-')), 'binary_bios_measurements');
    writeFileSync(
      logFile,
      agileLog(['sha256'], [{ pcr: 7, type: EV.EFI_VARIABLE_DRIVER_CONFIG, data: firmwareEvent }]),
    );
    const agent = await startTestAgent(server, {
      tcti: swtpm.tcti,
      event_log_path: logFile,
      socket_path: workloadSocketPath(),
      sync_interval: '200ms',
    });
    agents.push(agent);
    const agentId = (await until('the agent to attest', () => healthy(agent))).spiffe_id;
    await server.server.datastore.createEntry(
      entry('/cache/drift', agentId, [`unix:uid:${alice.uid}`]),
      'test',
    );
    await workloadWhere(agent, 'the workload SVID in the cache', (w) => w.svids === 1);
    expect(await outcomeFor(alice, agent)).toBe('ok');

    await extend(driftEvent);
    await until('the agent to hear it is untrusted', () =>
      agent.agent.status().reattest?.trusted === false ? true : undefined,
    );
    await agent.stop();
    await server.down();
    try {
      const lines = await restart(agent);
      await listening(agent);
      expect(agent.agent.status().reattest).toMatchObject({
        trusted: false,
        code: 'ERR_ATTEST_EVENTLOG_REPLAY',
      });
      expect(agent.agent.status().workload).toMatchObject({ svids: 0 });
      expect(await outcomeFor(alice, agent)).toBe('ERR_WORKLOADAPI_PERMISSION_DENIED');
      expect(logged(lines(), 'the node was untrusted when the agent stopped')).toMatchObject({
        level: 'warn',
        reason: 'ERR_ATTEST_EVENTLOG_REPLAY',
      });
    } finally {
      await agent.stop();
      await server.up();
    }
  });
});
