import { createServer, type Server, type Socket, connect as tcpConnect } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { AgentApiClient, Identity } from '../../src/agent/client.js';
import { AgentError } from '../../src/agent/errors.js';
import { startAttestServer, type TestServer } from '../attestation/harness.js';
import { agentClient, joinTokenAgent } from '../helpers/agent-api.js';
import { entry } from '../workload/harness.js';

// The agent API reads each connection's auth context once, when its TLS handshake ends, and answers
// every call on that connection from it (src/server/agentapi/listener.ts). These tests run a real
// server and count the TCP connections through a proxy, so that they show the calls in question
// really shared one connection: refusals still land on the very next call, and two agents never
// get each other's identity.

let server: TestServer;
let proxy: Server;
let proxyAddress: string;
/** Connections the proxy accepted, in order. */
const connections: Socket[] = [];

beforeAll(async () => {
  server = await startAttestServer({ agent_svid_ttl: '1h' });
  const target = Number(server.address.split(':')[1]);
  proxy = createServer((downstream) => {
    connections.push(downstream);
    const upstream = tcpConnect(target, '127.0.0.1');
    downstream.pipe(upstream).pipe(downstream);
    const end = () => {
      downstream.destroy();
      upstream.destroy();
    };
    downstream.on('error', end).on('close', end);
    upstream.on('error', end).on('close', end);
  });
  await new Promise<void>((resolve) => proxy.listen(0, '127.0.0.1', resolve));
  const bound = proxy.address();
  proxyAddress = `127.0.0.1:${typeof bound === 'object' && bound !== null ? bound.port : 0}`;
});

afterAll(async () => {
  for (const socket of connections) socket.destroy();
  await new Promise<void>((resolve) => (proxy ? proxy.close(() => resolve()) : resolve()));
  await server?.stop();
});

function clientAs(identity?: Identity): AgentApiClient {
  return agentClient(server, identity, proxyAddress);
}

/** A join-token agent attested now (its own connection), with one workload entry of its own. */
async function attested(name: string): Promise<{ agentId: string; identity: Identity; spiffeId: string }> {
  const { agentId, identity } = await joinTokenAgent(server, proxyAddress);
  const own = entry(`/connection-${name}`, agentId, ['unix:uid:1000']);
  await server.server.datastore.createEntry(own, 'test');
  return { agentId, identity, spiffeId: own.spiffeId };
}

/** The SPIFFE IDs a full FetchEntries gives the caller, or the code it was refused with. */
async function entriesOf(client: AgentApiClient): Promise<string[] | string> {
  try {
    return (await client.fetchEntries(undefined)).entries.map((e) => e.spiffe_id).sort();
  } catch (error) {
    if (error instanceof AgentError) return error.code;
    throw error;
  }
}

/** Runs `calls` and returns how many new connections the proxy saw meanwhile. */
async function newConnections(calls: () => Promise<void>): Promise<number> {
  const before = connections.length;
  await calls();
  return connections.length - before;
}

describe('agent API auth context kept per connection', () => {
  it('answers two agents on two kept connections, calls interleaved and concurrent, each as itself', async () => {
    const a = await attested('a');
    const b = await attested('b');
    const clientA = clientAs(a.identity);
    const clientB = clientAs(b.identity);
    try {
      const opened = await newConnections(async () => {
        for (let round = 0; round < 3; round++) {
          const answers = await Promise.all(
            Array.from({ length: 20 }, (_, i) => entriesOf(i % 2 === 0 ? clientA : clientB)),
          );
          answers.forEach((answer, i) => {
            expect(answer).toEqual([i % 2 === 0 ? a.spiffeId : b.spiffeId]);
          });
        }
      });
      expect(opened).toBe(2);
    } finally {
      clientA.close();
      clientB.close();
    }
  });

  it('refuses a caller without a client certificate on its connection while an agent is answered on its own', async () => {
    const a = await attested('c');
    const agent = clientAs(a.identity);
    const anonymous = clientAs();
    try {
      const opened = await newConnections(async () => {
        const answers = await Promise.all(
          Array.from({ length: 10 }, (_, i) => entriesOf(i % 2 === 0 ? agent : anonymous)),
        );
        answers.forEach((answer, i) => {
          expect(answer).toEqual(i % 2 === 0 ? [a.spiffeId] : 'ERR_AGENT_UNAUTHENTICATED');
        });
      });
      expect(opened).toBe(2);
    } finally {
      agent.close();
      anonymous.close();
    }
  });

  it('refuses the very next call on the same connection once the node is banned, and again once evicted', async () => {
    const a = await attested('d');
    const client = clientAs(a.identity);
    try {
      const opened = await newConnections(async () => {
        expect(await entriesOf(client)).toEqual([a.spiffeId]);
        await server.registration.banAgent({ spiffe_id: a.agentId, ek_hash: '' }, 'test');
        expect(await entriesOf(client)).toBe('ERR_ATTEST_BANNED');
        await server.registration.unbanAgent({ spiffe_id: a.agentId }, 'test');
        expect(await entriesOf(client)).toEqual([a.spiffeId]);
        await server.registration.evictAgent({ spiffe_id: a.agentId }, 'test');
        expect(await entriesOf(client)).toBe('ERR_AGENT_NOT_ATTESTED');
      });
      expect(opened).toBe(1);
    } finally {
      client.close();
    }
  });
});
