import { X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { WorkloadApiClient } from '../../src/workload-api/client.js';
import {
  healthy,
  startAttestServer,
  startTestAgent,
  type TestAgent,
  type TestServer,
  until,
} from '../attestation/harness.js';
import { entry, workloadSocketPath, workloadWhere } from '../workload/harness.js';

/**
 * The agent's calls on its SVID share one kept connection (src/agent/kept-client.ts). Whatever
 * changes under it, the server must see each call made with the agent's current credentials: these
 * tests read, from the server's own log, the serial of the agent SVID each JWT-SVID mint presented.
 */
describe('the kept agent connection, seen from the server', () => {
  let server: TestServer;
  let agent: TestAgent;
  let client: WorkloadApiClient;
  let agentId: string;
  let audiences = 0;
  let attestedSerial: string;
  const uid = process.getuid?.() ?? 0;

  beforeAll(async () => {
    // Renewal at about half of 16 s: after the first test, within the second.
    server = await startAttestServer({ agent_svid_ttl: '16s' });
    const token = await server.registration.createJoinToken({ ttl: 600, spiffe_id: '' }, 'test');
    const socketPath = workloadSocketPath();
    agent = await startTestAgent(server, {
      attestation: 'join_token',
      join_token: token.value,
      socket_path: socketPath,
      sync_interval: '200ms',
    });
    agentId = (await until('the agent to attest', () => healthy(agent))).spiffe_id;
    attestedSerial = agentSerial();
    await server.server.datastore.createEntry(entry('/kept/workload', agentId, [`unix:uid:${uid}`]), 'test');
    await workloadWhere(agent, 'the workload entry to reach the agent', (w) => w.entries >= 1);
    client = new WorkloadApiClient({ address: `unix://${socketPath}` });
  }, 60_000);

  afterAll(async () => {
    client?.close();
    await agent?.stop();
    await server?.stop();
  });

  /** The serial of the agent SVID the agent holds now, as it wrote it into data_dir. */
  function agentSerial(): string {
    return new X509Certificate(readFileSync(join(agent.dataDir, 'agent-svid.pem'))).serialNumber;
  }

  /** Mints a JWT-SVID through the agent (a new audience: never from its cache); the server's log line for it. */
  async function mint(): Promise<Record<string, unknown>> {
    const audience = `kept-${++audiences}`;
    await client.fetchJwtSvid({ audience: [audience] });
    const issued = server.logs.lines.filter(
      (l) =>
        l.msg === 'workload JWT-SVID issued' && Array.isArray(l.audience) && l.audience.includes(audience),
    );
    expect(issued).toHaveLength(1);
    return issued[0] as Record<string, unknown>;
  }

  /** Waits until `rounds` more sync rounds have succeeded. */
  async function syncRounds(rounds: number): Promise<void> {
    const syncs = () => agent.agent.status().workload?.syncs ?? 0;
    const from = syncs();
    await until(`${rounds} more sync rounds`, () => (syncs() >= from + rounds ? true : undefined));
  }

  it('mints JWT-SVIDs with the agent SVID the agent holds', async () => {
    const line = await mint();
    expect(line).toMatchObject({ agent_id: agentId, agent_serial: agentSerial() });
  });

  it('after the agent SVID renews, the next JWT-SVID is asked for with the new SVID', async () => {
    await until('the agent SVID to renew', () => (agent.agent.status().renewals >= 1 ? true : undefined));
    const after = agentSerial();
    expect(after).not.toBe(attestedSerial);
    const line = await mint();
    expect(line.agent_serial).toBe(after);
    // The server made the new SVID current, and refused nothing of this agent's as superseded.
    expect((await server.server.datastore.getNode(agentId))?.serialNumber).toBe(after);
    expect(server.logs.lines.filter((l) => l.reason === 'ERR_AGENT_CERT_SUPERSEDED')).toEqual([]);
  }, 30_000);

  it('after a CA rotation, the agent renews at once and mints with the SVID the new CA signed', async () => {
    const renewals = agent.agent.status().renewals;
    await server.server.ca.prepare('x509', 'test');
    const active = await server.server.ca.activate('x509', 'test');
    await until('the agent to renew for the new CA', () =>
      agent.agent.status().renewals > renewals ? true : undefined,
    );
    const serial = agentSerial();
    const leaf = new X509Certificate(readFileSync(join(agent.dataDir, 'agent-svid.pem')));
    const ca = new X509Certificate(Buffer.from(active.certificateDer ?? new Uint8Array()));
    expect(leaf.verify(ca.publicKey)).toBe(true);
    const line = await mint();
    expect(line.agent_serial).toBe(serial);
    expect(server.logs.lines.filter((l) => l.reason === 'ERR_AGENT_CERT_SUPERSEDED')).toEqual([]);
  }, 30_000);

  it('survives a server restart: syncs again and mints over a new connection', async () => {
    await server.restart();
    await syncRounds(2);
    const line = await mint();
    expect(line).toMatchObject({ agent_id: agentId, agent_serial: agentSerial() });
  }, 30_000);

  it('a JWT-SVID asked for after the agent is banned is refused by the server, by name', async () => {
    expect(agent.agent.status().suspended).toBeNull();
    await server.server.datastore.banNode({ spiffeId: agentId }, 'test');
    const audience = `kept-${++audiences}`;
    await expect(client.fetchJwtSvid({ audience: [audience] })).rejects.toThrow();
    const refused = server.logs.lines.filter(
      (l) => l.method === 'NewJWTSVID' && l.result === 'refused' && l.reason === 'ERR_ATTEST_BANNED',
    );
    expect(refused.length).toBeGreaterThanOrEqual(1);
    expect(server.logs.lines.some((l) => Array.isArray(l.audience) && l.audience.includes(audience))).toBe(
      false,
    );
    // A join-token agent has no re-quote status: its health says it serves nothing, and why.
    const suspended = await until(
      'the agent to stop serving',
      () => agent.agent.status().suspended ?? undefined,
    );
    expect(suspended).toMatchObject({
      code: 'ERR_ATTEST_BANNED',
      reason: expect.stringContaining('is banned'),
    });
    expect(agent.agent.status().reattest).toBeUndefined();
  });

  it('after the agent is evicted no JWT-SVID is minted: the server refuses its calls as not attested', async () => {
    await server.server.datastore.unbanNode(agentId, 'test');
    await server.server.datastore.deleteNode(agentId, 'test');
    const audience = `kept-${++audiences}`;
    // Refused by the server, or by the agent itself: it serves nothing since it was refused as
    // banned, and no call of its has been admitted since (the server refuses them as not attested).
    await expect(client.fetchJwtSvid({ audience: [audience] })).rejects.toThrow();
    await until('the server to refuse a call of the evicted agent as not attested', () =>
      server.logs.lines.some((l) => l.result === 'refused' && l.reason === 'ERR_AGENT_NOT_ATTESTED')
        ? true
        : undefined,
    );
    expect(server.logs.lines.some((l) => Array.isArray(l.audience) && l.audience.includes(audience))).toBe(
      false,
    );
  });
});
