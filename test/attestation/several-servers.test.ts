/**
 * Several real server processes on ONE PostgreSQL and ONE SoftHSM token (the same CA keys by
 * label), and a real agent on a real swtpm: what one server did, the others know (the node, its
 * nonces, join tokens, entries), and continuous attestation does not fight over a node whose
 * stream another server holds.
 */
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Agent } from '../../src/agent/agent.js';
import { AgentApiClient } from '../../src/agent/client.js';
import { loadAgentConfig } from '../../src/agent/config/load.js';
import { createAgentLogger } from '../../src/agent/log.js';
import type { X509SVIDResponseMessage } from '../../src/workload-api/proto.js';
import { assertBuilt } from '../helpers/dist.js';
import { startPostgres, type TestPostgres } from '../helpers/postgres.js';
import { RawClient } from '../helpers/raw-client.js';
import { cli, startTestServer, type TestServer } from '../helpers/server.js';
import { createSoftHsm, type SoftHsm } from '../helpers/softhsm.js';
import { type Swtpm, startSwtpm } from '../helpers/swtpm.js';
import { evilAttest, keyAndCsr } from './evil-agent.js';
import { ekCaDir, LogSink, TD, until } from './harness.js';

let postgres: TestPostgres;
let softhsm: SoftHsm;
let swtpm: Swtpm;
let dir: string;
let uriFile: string;
let caDir: string;
const servers: TestServer[] = [];

interface Running {
  server: TestServer;
  address: string;
  admin: string[];
}

beforeAll(async () => {
  assertBuilt();
  postgres = await startPostgres();
  softhsm = await createSoftHsm('ha-servers');
  swtpm = await startSwtpm();
  caDir = ekCaDir(swtpm);
  dir = mkdtempSync(join(tmpdir(), 'ironroot-ha-'));
  uriFile = join(dir, 'pg.uri');
  writeFileSync(uriFile, `${await postgres.createDatabase('ironroot_ha')}\n`, { mode: 0o600 });
});

afterAll(async () => {
  for (const server of servers) await server.stop();
  await postgres?.stop();
  await swtpm?.stop();
  await softhsm?.cleanup();
});

/** One more server process on the shared database and token, each with its own data_dir and ports. */
async function startServer(): Promise<Running> {
  const server = await startTestServer({
    key_manager: softhsm.uri(),
    datastore: { type: 'postgres', connection_string_file: uriFile, tls: { mode: 'disable' } },
    // Short intervals keep the tests quick. The deadline is longer: an agent moved from A to B is
    // re-quoted by B an interval after it reconnects, and on a loaded machine its restart alone takes
    // seconds; A leaves the node alone only while its last quote is within an interval plus the deadline.
    tpm_attestation: {
      measured_boot: 'none',
      ek_ca_dir: caDir,
      reattest_interval: '2s',
      reattest_deadline: '5s',
    },
  });
  servers.push(server);
  const port = /"port":(\d+)[^\n]*"msg":"agent API listening"/.exec(server.log())?.[1];
  if (port === undefined) throw new Error(`no agent API port in the log:\n${server.log()}`);
  return { server, address: `127.0.0.1:${port}`, admin: ['--admin-socket', server.socket] };
}

async function bundlePem(server: Running): Promise<string> {
  const shown = await cli(['bundle', 'show', ...server.admin, '--format', 'pem']);
  if (shown.code !== 0) throw new Error(shown.stderr);
  return shown.stdout;
}

async function json<T>(args: string[]): Promise<T> {
  const result = await cli([...args, '--output', 'json']);
  if (result.code !== 0) throw new Error(`${args.join(' ')}: ${result.stderr}`);
  return JSON.parse(result.stdout) as T;
}

/** The SPIFFE IDs of the SVIDs the agent's Workload API gives this (root) process now. */
async function workloadIds(socket: string): Promise<string[]> {
  const client = new RawClient(socket);
  const stream = client.stream<X509SVIDResponseMessage>('FetchX509SVID');
  try {
    const [first] = await stream.waitFor(1);
    return (first?.svids ?? []).map((s) => s.spiffe_id).sort();
  } catch {
    return [];
  } finally {
    stream.cancel();
    client.close();
  }
}

/** An agent's directory and trust bundle; `agentOn` makes the agent for one server's address. */
async function agentFiles(bundleFrom: Running) {
  const agentDir = mkdtempSync(join(tmpdir(), 'ironroot-ha-agent-'));
  const bundleFile = join(agentDir, 'bundle.pem');
  writeFileSync(bundleFile, await bundlePem(bundleFrom));
  const socket = join(agentDir, 'agent.sock');
  const logs = new LogSink();
  const agentOn = (server: Running) =>
    new Agent(
      loadAgentConfig({
        overrides: {
          server_address: server.address,
          trust_domain: TD,
          trust_bundle: bundleFile,
          data_dir: join(agentDir, 'data'),
          socket_path: socket,
          event_log_path: 'none',
          tcti: swtpm.tcti,
          retry_initial: '50ms',
          retry_max: '200ms',
        },
      }),
      createAgentLogger({ log_level: 'debug', log_format: 'json' }, logs.stream),
    );
  return { socket, logs, agentOn };
}

async function attested(agent: Agent): Promise<string> {
  return until('the agent to attest', () => {
    const status = agent.status();
    return status.state === 'healthy' && status.spiffe_id !== '' ? status.spiffe_id : undefined;
  });
}

async function readyStatus(server: Running): Promise<number> {
  return (await fetch(`http://127.0.0.1:${server.server.healthPort}/ready`)).status;
}

/** Polls until every server's /ready answers `status`; bounded by the test timeout. */
async function allReady(status: number, ...running: Running[]): Promise<void> {
  for (const server of running)
    await until(
      `${server.address} /ready ${status}`,
      async () => ((await readyStatus(server)) === status ? true : undefined),
      60_000,
    );
}

/** When the datastore says the node's last quote was verified (unix seconds; 0 before any). */
async function quotedAt(server: Running, agentId: string): Promise<number> {
  const shown = await json<{ last_quote: { quoted_at: number } | null }>([
    'agent',
    'show',
    ...server.admin,
    '--spiffe-id',
    agentId,
  ]);
  return shown.last_quote?.quoted_at ?? 0;
}

/** How many of this server's re-quote challenges it left to the server holding the node's stream. */
async function leftToOtherServer(server: Running): Promise<number> {
  const metrics = await (await fetch(`http://127.0.0.1:${server.server.healthPort}/metrics`)).text();
  const line = /^ironroot_node_reattestations_total\{result="ERR_REATTEST_OTHER_SERVER"\} (\d+)$/m.exec(
    metrics,
  );
  return Number(line?.[1] ?? 0);
}

/**
 * The recent log lines about re-quotes and servers, of each server and of the agent: what a timed-out
 * wait for re-quotes is diagnosed from (it has timed out, rarely, under load).
 */
function requoteEvidence(servers: readonly Running[], agentLogs: LogSink): string {
  const recent = (text: string) =>
    text
      .split('\n')
      // The message of each JSON line; every line names its process, so the whole line would match.
      .filter((line) => /"msg":"[^"]*(re-quote|reattest|challenge|server|stream|PostgreSQL)/i.test(line))
      .slice(-40)
      .join('\n');
  return [
    ...servers.map((s) => `--- server ${s.address}\n${recent(s.server.log())}`),
    `--- agent\n${recent(agentLogs.text())}`,
  ].join('\n');
}

/**
 * Waits for two more re-quotes of the node (recorded in the shared datastore, as `server` shows it)
 * and for `server` to have left one of its own challenges to the server holding the node's stream.
 * A timeout carries `evidence()`.
 */
async function requotedElsewhere(
  server: Running,
  agentId: string,
  when: string,
  evidence: () => string,
): Promise<void> {
  const left = await leftToOtherServer(server);
  try {
    for (const which of ['a re-quote', 'another re-quote']) {
      const before = await quotedAt(server, agentId);
      await until(
        `${which}${when}`,
        async () => ((await quotedAt(server, agentId)) > before ? true : undefined),
        60_000,
      );
    }
    await until(
      `a challenge of ${server.address} left to the other server${when}`,
      async () => ((await leftToOtherServer(server)) > left ? true : undefined),
      60_000,
    );
  } catch (error) {
    throw new Error(`${(error as Error).message}\n${evidence()}`, { cause: error });
  }
}

describe('servers sharing one PostgreSQL and one HSM token', () => {
  let a: Running;
  let b: Running;

  beforeAll(async () => {
    // One after the other: the first creates the CA keys, the second finds them by label.
    a = await startServer();
    b = await startServer();
  });

  it('serves one CA: both publish the same bundle', async () => {
    expect(await bundlePem(b)).toBe(await bundlePem(a));
  });

  it('an agent attested on A syncs on B, getting entries written through A, and stays trusted while B re-quotes it', async () => {
    const { socket, logs, agentOn } = await agentFiles(a);
    let agent = agentOn(a);
    await agent.start();
    try {
      const agentId = await attested(agent);
      const first = `spiffe://${TD}/ha/first`;
      await json([
        'entry',
        'create',
        ...a.admin,
        '--spiffe-id',
        first,
        '--parent-id',
        agentId,
        '--selector',
        'unix:uid:0',
      ]);
      await until('the first SVID through A', async () =>
        (await workloadIds(socket)).includes(first) ? true : undefined,
      );

      // The operator points the agent at B (its attestation and cursor carry over) and restarts it.
      await agent.stop();
      agent = agentOn(b);
      await agent.start();
      // An entry written through A after the agent left it: only B's sync can bring it.
      const second = `spiffe://${TD}/ha/second`;
      await json([
        'entry',
        'create',
        ...a.admin,
        '--spiffe-id',
        second,
        '--parent-id',
        agentId,
        '--selector',
        'unix:uid:0',
      ]);
      await until('the second SVID through B', async () =>
        (await workloadIds(socket)).includes(second) ? true : undefined,
      );
      expect(await workloadIds(socket)).toEqual([first, second]);

      // B holds the Reattest stream now; A still schedules the node (it attested there) but must not
      // judge it for challenges that never reached it. Wait for B's re-quotes to move on, twice.
      await requotedElsewhere(a, agentId, '', () => requoteEvidence([a, b], logs));
      const shown = await json<{ trust: { state: string } }>([
        'agent',
        'show',
        ...a.admin,
        '--spiffe-id',
        agentId,
      ]);
      expect(shown.trust.state).toBe('trusted');
      expect(a.server.log()).not.toContain('node re-quote failed');
      expect(b.server.log()).not.toContain('node re-quote failed');
      expect(agent.status().state).toBe('healthy');
    } finally {
      await agent.stop();
    }
  }, 180_000);

  it('a quote answered on A and replayed on B is refused as ERR_ATTEST_NONCE_REPLAYED', async () => {
    const first = await evilAttest({ address: a.address, bundlePem: await bundlePem(a) }, swtpm.tcti);
    const earlier = first.answer;
    if (
      first.result === undefined ||
      earlier === undefined ||
      first.evidence === undefined ||
      first.ak === undefined
    )
      throw new Error(`attestation on A failed: ${first.error?.message}`);
    const replay = await evilAttest(
      { address: b.address, bundlePem: await bundlePem(b) },
      swtpm.tcti,
      { answer: (honest) => ({ ...earlier, activated_secret: honest.activated_secret }) },
      { reuse: { evidence: first.evidence, ak: first.ak } },
    );
    expect(replay.error?.code).toBe('ERR_ATTEST_NONCE_REPLAYED');
    // The same handshake answered honestly on B passes: B issued and consumed its own nonce.
    const honest = await evilAttest(
      { address: b.address, bundlePem: await bundlePem(b) },
      swtpm.tcti,
      {},
      {
        reuse: { evidence: first.evidence, ak: first.ak },
      },
    );
    expect(honest.result?.spiffe_id).toBe(first.result.spiffe_id);
  }, 120_000);

  it('with a third server: a join token made on C and used on A is refused on B', async () => {
    const c = await startServer();
    const token = await json<{ value: string }>([
      'token',
      'generate',
      ...c.admin,
      '--spiffe-id',
      `spiffe://${TD}/node/ha`,
    ]);
    const attest = async (server: Running) => {
      const client = new AgentApiClient({
        address: server.address,
        trustDomain: TD,
        bundlePem: await bundlePem(server),
      });
      try {
        const { csr } = await keyAndCsr();
        return await client.attest(
          { method: 'join_token', join_token: token.value, csr, tpm: null },
          async () => {
            throw new Error('a join token gets no challenge');
          },
        );
      } finally {
        client.close();
      }
    };
    const onA = await attest(a);
    expect(onA.spiffe_id).toMatch(new RegExp(`^spiffe://${TD}/agent/join_token/`));
    await expect(attest(b)).rejects.toMatchObject({ code: 'ERR_ATTEST_JOIN_TOKEN_INVALID' });
    for (const server of [a, b, c]) expect(server.server.log()).not.toContain(token.value);
  }, 120_000);

  it('while PostgreSQL is down the agent serves its cached SVIDs and the servers are not ready; all recover after', async () => {
    // A's log from here on: an earlier test's agent (the same TPM, so the same node) stopped while A
    // still re-quoted it, and its unanswered challenges are that test's, not this one's.
    const logFrom = a.server.log().length;
    const { socket, logs, agentOn } = await agentFiles(b);
    // Attested on A (which then schedules its re-quotes too), then moved to B.
    const first = agentOn(a);
    await first.start();
    const agentId = await attested(first);
    await first.stop();
    const agent = agentOn(b);
    await agent.start();
    try {
      await attested(agent);
      const cached = `spiffe://${TD}/ha/cached`;
      await json([
        'entry',
        'create',
        ...b.admin,
        '--spiffe-id',
        cached,
        '--parent-id',
        agentId,
        '--selector',
        'unix:uid:0',
      ]);
      await until('the SVID before the outage', async () =>
        (await workloadIds(socket)).includes(cached) ? true : undefined,
      );

      // A has no stream of the node, so it writes no nonce for it; it fails to read the node at
      // each challenge's deadline instead.
      const failedRequotes = () =>
        a.server.log().split(/re-quote challenge could not be issued|re-quote could not be judged/).length -
        1;
      // A has the node scheduled: it was attested there.
      const failedBefore = failedRequotes();
      await postgres.halt();
      await allReady(503, a, b);
      // Down for several re-quote intervals (longer than a node may go unquoted), counted in A's
      // failed challenges rather than in seconds.
      await until(
        'three failed re-quotes on A',
        () => (failedRequotes() >= failedBefore + 3 ? true : undefined),
        60_000,
      );
      expect(await workloadIds(socket)).toContain(cached);
      const before = await fetch(`http://127.0.0.1:${b.server.healthPort}/ready`);
      expect(((await before.json()) as { reason: string }).reason).not.toBe('');

      await postgres.start();
      await allReady(200, a, b);
      // Sync works again: an entry written through A after the outage reaches the agent through B.
      const after = `spiffe://${TD}/ha/after-outage`;
      await json([
        'entry',
        'create',
        ...a.admin,
        '--spiffe-id',
        after,
        '--parent-id',
        agentId,
        '--selector',
        'unix:uid:0',
      ]);
      await until(
        'the SVID written after the outage',
        async () => ((await workloadIds(socket)).includes(after) ? true : undefined),
        60_000,
      );
      // Re-quotes go on through B, and A, back from the outage too, leaves the node trusted.
      await requotedElsewhere(a, agentId, ' after the outage', () => requoteEvidence([a, b], logs));
      const shown = await json<{ trust: { state: string } }>([
        'agent',
        'show',
        ...a.admin,
        '--spiffe-id',
        agentId,
      ]);
      expect(shown.trust.state).toBe('trusted');
      // From this test's attestation on A on: before it the node was left by the earlier tests'
      // agents, and A rightly makes a node nobody re-quotes untrusted.
      const attestedHere = a.server.log().indexOf('"msg":"agent attest accepted"', logFrom);
      expect(attestedHere).toBeGreaterThan(-1);
      expect(a.server.log().slice(attestedHere)).not.toContain('node re-quote failed');
    } finally {
      await agent.stop();
    }
  }, 240_000);
});
