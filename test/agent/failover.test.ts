import { readFileSync, writeFileSync } from 'node:fs';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { WorkloadApiClient } from '../../src/workload-api/client.js';
import {
  healthy,
  startAttestServer,
  startTestAgent,
  TD,
  type TestAgent,
  type TestServer,
  until,
} from '../attestation/harness.js';
import { freePort } from '../helpers/server.js';
import { entry, workloadSocketPath, workloadWhere } from '../workload/harness.js';

const uid = process.getuid?.() ?? 0;
const UNREACHABLE = 'the server is unreachable; serving the cached SVIDs and retrying with backoff';
const MOVED = 'cannot reach this server; moving to the next';
const CHANGED = 'the server in use changed: the previous one could not be reached';
const RETRY_INITIAL_MS = 100;
const RETRY_MAX_MS = 400;
/**
 * grpc-js dials once more when the first connection drops before failing a call, and the agent
 * opens one more to look at the certificate of a server that seems away: three connections a call.
 */
const CONNECTIONS_PER_CALL = 3;

/**
 * The most passes over the list that can start within `windowMs`: after the n-th failed pass the
 * agent waits at least half of min(retry_initial × 2^(n-1), retry_max) (jitter takes up to half off).
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

/** A TCP relay to `target`: a second address of that server, which the test can take away. */
async function relayTo(target: string): Promise<{ address: string; close: () => Promise<void> }> {
  const colon = target.lastIndexOf(':');
  const sockets = new Set<Socket>();
  const server = createServer((inbound) => {
    const outbound = connect(Number(target.slice(colon + 1)), target.slice(0, colon));
    for (const s of [inbound, outbound]) {
      sockets.add(s);
      s.on('close', () => sockets.delete(s));
      s.on('error', () => {
        inbound.destroy();
        outbound.destroy();
      });
    }
    inbound.pipe(outbound).pipe(inbound);
  });
  await listen(server, 0);
  const { port } = server.address() as { port: number };
  return {
    address: `127.0.0.1:${port}`,
    close: () => {
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      for (const s of sockets) s.destroy();
      return closed;
    },
  };
}

/** Stands for a server that is away: counts TCP connections and drops each at once. */
async function dropping(): Promise<{ address: string; count: () => number; close: () => Promise<void> }> {
  let count = 0;
  const server = createServer((socket) => {
    count++;
    socket.destroy();
  });
  await listen(server, 0);
  const { port } = server.address() as { port: number };
  return {
    address: `127.0.0.1:${port}`,
    count: () => count,
    close: () => new Promise((resolve) => server.close(() => resolve())),
  };
}

function listen(server: Server, port: number): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', () => resolve());
  });
}

async function joinToken(server: TestServer): Promise<string> {
  return (await server.registration.createJoinToken({ ttl: 600, spiffe_id: '' }, 'test')).value;
}

/** The workload's X.509-SVID from the agent's Workload API, by its SPIFFE ID. */
async function servedId(socketPath: string): Promise<string> {
  const client = new WorkloadApiClient({ address: `unix://${socketPath}` });
  try {
    const context = await client.fetchX509Context();
    return context.svids[0]?.svid.id.toString() ?? '';
  } finally {
    client.close();
  }
}

/** The log lines with message `msg`. */
function lines(agent: TestAgent, msg: string): Record<string, unknown>[] {
  return agent.logs.lines.filter((l) => l.msg === msg);
}

describe('agent failover across server addresses', () => {
  let server: TestServer;

  beforeAll(async () => {
    server = await startAttestServer();
  }, 60_000);

  afterAll(async () => {
    await server?.stop();
  });

  describe('a list whose first address has nothing listening', () => {
    let agent: TestAgent;
    let closed: string;
    let socketPath: string;

    beforeAll(async () => {
      closed = `127.0.0.1:${await freePort()}`;
      socketPath = workloadSocketPath();
      agent = await startTestAgent(server, {
        server_address: undefined,
        server_addresses: [closed, server.address],
        attestation: 'join_token',
        join_token: await joinToken(server),
        socket_path: socketPath,
        sync_interval: '200ms',
      });
    }, 60_000);

    afterAll(async () => {
      await agent?.stop();
    });

    it('attests through the second address and serves workload SVIDs from it', async () => {
      const agentId = (await until('the agent to attest', () => healthy(agent))).spiffe_id;
      await server.server.datastore.createEntry(
        entry('/failover/first-closed', agentId, [`unix:uid:${uid}`]),
        'test',
      );
      await workloadWhere(agent, 'the workload SVID', (w) => w.svids === 1);
      expect(await servedId(socketPath)).toBe(`spiffe://${TD}/failover/first-closed`);
      expect(agent.agent.status().server_address).toBe(server.address);
    });

    it('logs the move away from the closed address and the server in use, without an outage', () => {
      expect(lines(agent, MOVED)[0]).toMatchObject({
        server_address: closed,
        next_server_address: server.address,
        reason: 'ERR_AGENT_SERVER_UNAVAILABLE',
      });
      expect(lines(agent, 'talking to the server')).toEqual([
        expect.objectContaining({ level: 'info', server_address: server.address }),
      ]);
      expect(lines(agent, UNREACHABLE)).toEqual([]);
      expect(agent.agent.status()).toMatchObject({ consecutive_failures: 0, last_error: null });
    });
  });

  describe('a host name with two addresses', () => {
    let agent: TestAgent;
    const asked: string[] = [];
    const port = () => server.address.split(':')[1];

    beforeAll(async () => {
      // The host's resolver has one address for localhost here; this one gives the name two, the
      // first ([::1], where nothing listens on the server's port) before the server's own.
      agent = await startTestAgent(
        server,
        {
          server_address: `servers.ironroot.test:${port()}`,
          attestation: 'join_token',
          join_token: await joinToken(server),
          sync_interval: '200ms',
        },
        {
          lookup: async (host) => {
            asked.push(host);
            return [
              { address: '::1', family: 6 },
              { address: '127.0.0.1', family: 4 },
            ];
          },
        },
      );
    }, 60_000);

    afterAll(async () => {
      await agent?.stop();
    });

    it('tries each address of the name: attests on the second after the first refused', async () => {
      await until('the agent to attest', () => healthy(agent));
      expect(asked[0]).toBe('servers.ironroot.test');
      expect(lines(agent, MOVED)[0]).toMatchObject({
        server_address: `[::1]:${port()}`,
        next_server_address: `127.0.0.1:${port()}`,
      });
      expect(lines(agent, 'talking to the server')).toEqual([
        expect.objectContaining({
          server_address: `127.0.0.1:${port()}`,
          server_name: `servers.ironroot.test:${port()}`,
        }),
      ]);
      expect(agent.agent.status().server_address).toBe(`127.0.0.1:${port()}`);
    });
  });

  describe('the address in use goes away mid-run', () => {
    let agent: TestAgent;
    let relay: Awaited<ReturnType<typeof relayTo>>;
    let socketPath: string;
    let client: WorkloadApiClient;
    let audiences = 0;

    beforeAll(async () => {
      relay = await relayTo(server.address);
      socketPath = workloadSocketPath();
      agent = await startTestAgent(server, {
        server_address: undefined,
        server_addresses: [relay.address, server.address],
        attestation: 'join_token',
        join_token: await joinToken(server),
        socket_path: socketPath,
        sync_interval: '200ms',
        metrics_address: '127.0.0.1:0',
      });
      const agentId = (await until('the agent to attest', () => healthy(agent))).spiffe_id;
      await server.server.datastore.createEntry(
        entry('/failover/mid-run', agentId, [`unix:uid:${uid}`]),
        'test',
      );
      await workloadWhere(agent, 'the workload SVID', (w) => w.svids === 1);
      client = new WorkloadApiClient({ address: `unix://${socketPath}` });
    }, 60_000);

    afterAll(async () => {
      client?.close();
      await agent?.stop();
      await relay?.close();
    });

    /** A JWT-SVID minted through the agent for a new audience: the server's log line for it. */
    async function mint(): Promise<Record<string, unknown> | undefined> {
      const audience = `failover-${++audiences}`;
      await client.fetchJwtSvid({ audience: [audience] });
      return server.logs.lines.find(
        (l) =>
          l.msg === 'workload JWT-SVID issued' && Array.isArray(l.audience) && l.audience.includes(audience),
      );
    }

    it('uses the first address while it works', async () => {
      expect(agent.agent.status().server_address).toBe(relay.address);
      expect(await mint()).toBeDefined();
    });

    it('continues on the next address: syncs, mints JWT-SVIDs and serves SVIDs, with no outage', async () => {
      const firstLine = agent.logs.lines.length;
      await relay.close();
      const syncs = agent.agent.status().workload?.syncs ?? 0;
      await until('two sync rounds after the relay went away', () =>
        (agent.agent.status().workload?.syncs ?? 0) >= syncs + 2 ? true : undefined,
      );
      expect(await mint()).toBeDefined();
      expect(await servedId(socketPath)).toBe(`spiffe://${TD}/failover/mid-run`);
      const status = agent.agent.status();
      expect(status).toMatchObject({ server_address: server.address, healthy: true, last_error: null });
      const after = agent.logs.lines.slice(firstLine);
      expect(after.filter((l) => l.msg === CHANGED)).toEqual([
        expect.objectContaining({
          level: 'warn',
          server_address: server.address,
          previous_server_address: relay.address,
          reason: 'ERR_AGENT_SERVER_UNAVAILABLE',
        }),
      ]);
      expect(after.filter((l) => l.msg === UNREACHABLE)).toEqual([]);
      const metrics = await (await fetch(`http://${agent.agent.metricsAddress}/metrics`)).text();
      expect(metrics.split('\n').filter((l) => l.startsWith('ironroot_agent_server_changes_total'))).toEqual([
        'ironroot_agent_server_changes_total{reason="ERR_AGENT_SERVER_UNAVAILABLE"} 1',
      ]);
    });
  });

  describe('a refusal by the server in use', () => {
    let refusing: TestServer;
    let agent: TestAgent;
    const attests = (on: TestServer) => on.logs.decisions().filter((l) => l.operation === 'attest');
    let attestsBefore = 0;

    beforeAll(async () => {
      attestsBefore = attests(server).length;
      // A second server with a datastore of its own: it never heard of the join token.
      refusing = await startAttestServer();
      const bundle = join(refusing.dataDir, '..', 'both.pem');
      writeFileSync(
        bundle,
        readFileSync(refusing.bundleFile, 'utf8') + readFileSync(server.bundleFile, 'utf8'),
      );
      agent = await startTestAgent(server, {
        server_address: undefined,
        server_addresses: [refusing.address, server.address],
        trust_bundle: bundle,
        attestation: 'join_token',
        join_token: await joinToken(server),
      });
    }, 60_000);

    afterAll(async () => {
      await agent?.stop();
      await refusing?.stop();
    });

    it('is not retried on another server: the agent backs off and asks the same one again', async () => {
      const refusals = () => attests(refusing).filter((l) => l.reason === 'ERR_ATTEST_JOIN_TOKEN_INVALID');
      await until('two refused attestations', () => (refusals().length >= 2 ? true : undefined));
      // The server holding the token was never asked.
      expect(attests(server)).toHaveLength(attestsBefore);
      expect(lines(agent, MOVED)).toEqual([]);
      expect(agent.agent.status()).toMatchObject({
        server_address: refusing.address,
        spiffe_id: '',
        last_error: { code: 'ERR_ATTEST_JOIN_TOKEN_INVALID' },
      });
    });
  });

  describe('every address away', () => {
    let agent: TestAgent;
    let first: Awaited<ReturnType<typeof dropping>>;
    let second: Awaited<ReturnType<typeof dropping>>;
    let started = 0;

    beforeAll(async () => {
      first = await dropping();
      second = await dropping();
      agent = await startTestAgent(server, {
        server_address: undefined,
        server_addresses: [first.address, second.address],
        attestation: 'join_token',
        join_token: 'never-used',
        retry_initial: `${RETRY_INITIAL_MS}ms`,
        retry_max: `${RETRY_MAX_MS}ms`,
      });
      started = Date.now();
    }, 60_000);

    afterAll(async () => {
      await agent?.stop();
      await first?.close();
      await second?.close();
    });

    it('counts one failure per pass over the list, each pass trying every address once', async () => {
      const status = await until('four failed passes', () => {
        const s = agent.agent.status();
        return s.consecutive_failures >= 4 ? s : undefined;
      });
      const passes = status.consecutive_failures;
      // Read after the status: every pass it counts reached both addresses.
      const counts = [first.count(), second.count()];
      const windowMs = Date.now() - started;
      for (const count of counts) {
        expect(count).toBeGreaterThanOrEqual(passes);
        // No address is dialled more often than the backoff between passes allows.
        expect(count).toBeLessThanOrEqual(CONNECTIONS_PER_CALL * attemptsBound(windowMs));
      }
      expect(status.last_error?.code).toBe('ERR_AGENT_SERVER_UNAVAILABLE');
      expect(lines(agent, UNREACHABLE)).toHaveLength(1);
      expect(
        lines(agent, MOVED).filter((l) => l.server_address === first.address).length,
      ).toBeGreaterThanOrEqual(passes);
    });
  });
});
