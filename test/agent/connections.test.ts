import { connect, createServer, type Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { HealthStatus } from '../../src/agent/health.js';
import {
  startAttestServer,
  startTestAgent,
  type TestAgent,
  type TestServer,
  until,
} from '../attestation/harness.js';

/** Sync rounds watched while counting connections. */
const ROUNDS = 5;

interface Relay {
  readonly address: string;
  readonly count: () => number;
  readonly close: () => Promise<void>;
}

/** A TCP relay in front of the server's port that counts the connections made through it. */
async function countingRelay(target: string): Promise<Relay> {
  const colon = target.lastIndexOf(':');
  const host = target.slice(0, colon);
  const port = Number(target.slice(colon + 1));
  let count = 0;
  const sockets = new Set<Socket>();
  const server = createServer((inbound) => {
    count++;
    const outbound = connect(port, host);
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
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const { port: own } = server.address() as { port: number };
  return {
    address: `127.0.0.1:${own}`,
    count: () => count,
    close: () => {
      for (const s of sockets) s.destroy();
      return new Promise((resolve) => server.close(() => resolve()));
    },
  };
}

function syncs(status: HealthStatus): number {
  return status.workload?.syncs ?? 0;
}

/** Waits for `rounds` more sync rounds; their start and end in connections and renewals. */
async function watchRounds(agent: TestAgent, relay: Relay, rounds: number) {
  const first = agent.agent.status();
  const connections = relay.count();
  const last = await until(`${rounds} sync rounds`, () => {
    const s = agent.agent.status();
    return syncs(s) >= syncs(first) + rounds ? s : undefined;
  });
  return {
    renewals: [first.renewals, last.renewals],
    connections: [connections, relay.count()],
  };
}

describe('agent connections to the server', () => {
  let server: TestServer;
  let relay: Relay;
  let agent: TestAgent;
  let atStart: { renewals: number[]; connections: number[] };
  let afterRenewal: { renewals: number[]; connections: number[] };
  let renewalConnections = 0;
  let afterBundle: { renewals: number[]; connections: number[] };
  let bundleConnections = 0;

  beforeAll(async () => {
    // Renewal at about half of 16 s: the rounds before it are watched first.
    server = await startAttestServer({ agent_svid_ttl: '16s' });
    relay = await countingRelay(server.address);
    const token = await server.registration.createJoinToken({ ttl: 600, spiffe_id: '' }, 'test');
    agent = await startTestAgent(server, {
      server_address: relay.address,
      attestation: 'join_token',
      join_token: token.value,
      sync_interval: '200ms',
    });
    await until('the first sync round', () => (syncs(agent.agent.status()) > 0 ? true : undefined));
    atStart = await watchRounds(agent, relay, ROUNDS);
    const before = relay.count();
    const renewed = await until('the agent SVID to renew', () => {
      const s = agent.agent.status();
      return s.renewals === 1 ? s : undefined;
    });
    // A round on a connection with the new SVID: the second to end after the renewal (the first may
    // have started before it, on the old connection, when the machine is slow).
    await until('a sync round with the renewed SVID', () =>
      syncs(agent.agent.status()) > syncs(renewed) + 1 ? true : undefined,
    );
    renewalConnections = relay.count() - before;
    afterRenewal = await watchRounds(agent, relay, ROUNDS);

    // A prepared CA joins the bundle: the agent keeps it, and verifies the server with it from then on.
    const beforePrepare = relay.count();
    const kept = () =>
      agent.logs.lines.filter((l) => l.msg === 'trust bundle updated from the server').length;
    const keptBefore = kept();
    await server.server.ca.prepare('x509', 'test');
    await until('the agent to keep the new bundle', () => (kept() > keptBefore ? true : undefined));
    const atKeep = agent.agent.status();
    // As above: the second round to end after the bundle was kept started after it.
    await until('a sync round with the new bundle', () =>
      syncs(agent.agent.status()) > syncs(atKeep) + 1 ? true : undefined,
    );
    bundleConnections = relay.count() - beforePrepare;
    afterBundle = await watchRounds(agent, relay, ROUNDS);
  }, 60_000);

  afterAll(async () => {
    await agent?.stop();
    await relay?.close();
    await server?.stop();
  });

  it('syncs round after round over one connection', () => {
    expect(atStart.renewals).toEqual([0, 0]);
    expect(atStart.connections[1]).toBe(atStart.connections[0]);
  });

  it('dials once when the agent SVID renews: the renewal runs on the kept connection, the new SVID dials', () => {
    expect(renewalConnections).toBe(1);
    expect(afterRenewal.renewals).toEqual([1, 1]);
    expect(afterRenewal.connections[1]).toBe(afterRenewal.connections[0]);
  });

  it('dials again once the trust bundle changes, without a renewal', () => {
    expect(bundleConnections).toBe(1);
    expect(afterBundle.renewals).toEqual([1, 1]);
    expect(afterBundle.connections[1]).toBe(afterBundle.connections[0]);
  });
});
