import { execFile } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { HealthStatus } from '../../src/agent/health.js';
import {
  healthy,
  startAttestServer,
  startTestAgent,
  TD,
  type TestAgent,
  type TestServer,
  until,
} from '../attestation/harness.js';
import { builtBin } from '../helpers/dist.js';
import { entry, workloadSocketPath, workloadWhere } from '../workload/harness.js';

const exec = promisify(execFile);
const AGENT = builtBin('ironroot-agent');
const me = `unix:uid:${process.getuid?.() ?? 0}`;

const RETRY_INITIAL_MS = 100;
const RETRY_MAX_MS = 2000;
/** Loops that call the server on their own for a join-token agent: the agent SVID's and the sync. */
const LOOPS = 2;
/**
 * grpc-js dials once more when the first connection drops before failing a call, and the agent
 * opens one more to look at the certificate of a server that seems away: three connections a call.
 */
const CONNECTIONS_PER_CALL = 3;
const UNREACHABLE = 'the server is unreachable; serving the cached SVIDs and retrying with backoff';
const REACHABLE = 'the server is reachable again';

/**
 * The most attempts one loop can start within `windowMs` of its first failure: after its n-th
 * failure it waits at least half of min(retry_initial × 2^(n-1), retry_max) (jitter takes up to
 * half off), and failures shared with the other loops only make the waits longer.
 */
function attemptsBound(windowMs: number): number {
  let attempts = 1;
  let elapsed = 0;
  for (let n = 1; ; n++) {
    elapsed += Math.min(RETRY_INITIAL_MS * 2 ** (n - 1), RETRY_MAX_MS) / 2;
    if (elapsed > windowMs) return attempts;
    attempts++;
  }
}

async function healthcheck(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await exec(process.execPath, [AGENT, 'healthcheck', ...args]);
    return { code: 0, stdout, stderr };
  } catch (error) {
    const e = error as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

/** Stands in for the stopped server on its port: counts TCP connections and drops each at once. */
async function countConnections(port: number): Promise<{ server: Server; count: () => number }> {
  let count = 0;
  const server = createServer((socket) => {
    count++;
    socket.destroy();
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', () => resolve());
  });
  return { server, count: () => count };
}

describe('agent with an SVID due while the server is away', () => {
  let server: TestServer;
  let agent: TestAgent;
  let configFile: string;
  let before: HealthStatus;
  let connections = 0;
  let windowMs = 0;
  let linesDuringOutage: Record<string, unknown>[] = [];
  let during: HealthStatus;
  let checkDuring: { code: number; stdout: string };
  let checkAfter: { code: number; stdout: string };
  let after: HealthStatus;

  beforeAll(async () => {
    server = await startAttestServer();
    const token = await server.registration.createJoinToken({ ttl: 600, spiffe_id: '' }, 'test');
    agent = await startTestAgent(server, {
      attestation: 'join_token',
      join_token: token.value,
      socket_path: workloadSocketPath(),
      sync_interval: '200ms',
      retry_initial: `${RETRY_INITIAL_MS}ms`,
      retry_max: `${RETRY_MAX_MS}ms`,
    });
    const agentId = (await until('the agent to attest', () => healthy(agent))).spiffe_id;
    const dir = mkdtempSync(join(tmpdir(), 'ironroot-backoff-'));
    configFile = join(dir, 'agent.yaml');
    writeFileSync(
      configFile,
      `server_address: ${server.address}\ntrust_domain: ${TD}\ninsecure_bootstrap: true\nattestation: join_token\njoin_token_file: ${join(dir, 'join-token')}\ndata_dir: ${agent.dataDir}\n`,
    );

    // Rotation is due at about half of 8 s: from then on every sync finds an SVID due.
    await server.server.datastore.createEntry(entry('/due', agentId, [me], { x509SvidTtl: 8 }), 'test');
    await workloadWhere(agent, 'the workload SVID', (w) => w.svids === 1);
    before = agent.agent.status();
    const expiresAt = (before.soonest_expiry ?? 0) * 1000;

    const port = Number(server.address.split(':')[1]);
    const firstLine = agent.logs.lines.length;
    await server.down();
    const started = Date.now();
    const counter = await countConnections(port);
    try {
      // Past 3/4 of the SVID's life (renewal overdue), and then past its expiry.
      during = await until('the agent to turn unhealthy', () => {
        const s = agent.agent.status();
        return s.unhealthy_reasons.includes('SVID_RENEWAL_OVERDUE') ? s : undefined;
      });
      checkDuring = await healthcheck(['--config', configFile]);
      await until('the workload SVID to expire', () => (Date.now() > expiresAt + 500 ? true : undefined));
      connections = counter.count();
      windowMs = Date.now() - started;
    } finally {
      await new Promise((resolve) => counter.server.close(resolve));
    }
    linesDuringOutage = agent.logs.lines.slice(firstLine);
    await server.up();
    after = await until('the agent to be healthy again', () => {
      const s = agent.agent.status();
      return s.healthy && s.state === 'healthy' ? s : undefined;
    });
    checkAfter = await healthcheck(['--config', configFile]);
  });

  afterAll(async () => {
    await agent?.stop();
    await server?.stop();
  });

  it('connects no more often than the backoff from retry_initial to retry_max allows', () => {
    expect(connections).toBeGreaterThan(0);
    expect(connections).toBeLessThanOrEqual(LOOPS * CONNECTIONS_PER_CALL * attemptsBound(windowMs));
  });

  it('logs one "unreachable" line with the cause code for the outage, not a line per attempt', () => {
    const unreachable = linesDuringOutage.filter((l) => l.msg === UNREACHABLE);
    expect(unreachable).toHaveLength(1);
    expect(unreachable[0]).toMatchObject({ level: 'warn', reason: 'ERR_AGENT_SERVER_UNAVAILABLE' });
    expect(
      linesDuringOutage.filter((l) => ['warn', 'error', 'fatal'].includes(String(l.level))),
    ).toHaveLength(1);
  });

  it('logs one "reachable again" line after the restart, with the outage length and attempts', () => {
    const back = agent.logs.lines.filter((l) => l.msg === REACHABLE);
    expect(back).toHaveLength(1);
    expect(back[0]).toMatchObject({ level: 'info', reason: 'ERR_AGENT_SERVER_UNAVAILABLE' });
    expect(back[0]?.attempts).toBeGreaterThan(0);
    expect(back[0]?.down_ms).toBeGreaterThan(0);
  });

  it('turns unhealthy during the outage with last_error set and the last successful sync unchanged', () => {
    expect(before.healthy).toBe(true);
    expect(during.healthy).toBe(false);
    expect(during.last_error?.code).toBe('ERR_AGENT_SERVER_UNAVAILABLE');
    expect(during.consecutive_failures).toBeGreaterThan(0);
    expect(during.failing_since).not.toBeNull();
    expect(during.last_sync_at).toBe(before.last_sync_at);
    expect(during.soonest_expiry).toBe(before.soonest_expiry);
  });

  it('healthcheck --config exits 1 while unhealthy, still printing the status JSON', () => {
    expect(checkDuring.code).toBe(1);
    expect(JSON.parse(checkDuring.stdout)).toMatchObject({
      healthy: false,
      last_error: { code: 'ERR_AGENT_SERVER_UNAVAILABLE' },
    });
  });

  it('is healthy again after the restart, and healthcheck --config exits 0', () => {
    expect(after).toMatchObject({
      healthy: true,
      last_error: null,
      consecutive_failures: 0,
      failing_since: null,
    });
    expect(after.last_sync_at).toBeGreaterThan(before.last_sync_at ?? 0);
    expect(checkAfter.code).toBe(0);
    expect(JSON.parse(checkAfter.stdout)).toMatchObject({ healthy: true, unhealthy_reasons: [] });
  });
});
