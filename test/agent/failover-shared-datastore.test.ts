import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { WorkloadApiClient } from '../../src/workload-api/client.js';
import {
  healthy,
  removeHsm,
  startAttestServer,
  startTestAgent,
  TD,
  type TestAgent,
  type TestServer,
  until,
} from '../attestation/harness.js';
import { startPostgres, type TestPostgres } from '../helpers/postgres.js';
import { type Swtpm, startSwtpm } from '../helpers/swtpm.js';
import { entry, workloadSocketPath, workloadWhere } from '../workload/harness.js';

const UNREACHABLE = 'the server is unreachable; serving the cached SVIDs and retrying with backoff';
const CHANGED = 'the server in use changed: the previous one could not be reached';

/**
 * Two servers on one PostgreSQL database and one SoftHSM token (the harness's, shared by the
 * servers of this file), and a TPM agent (swtpm) that names both. The server in use is stopped
 * while the agent runs: attestation state, entries and CA are the database's and the token's, so
 * the other server carries on where it left off.
 */
describe('two servers sharing one datastore: the server in use stops', () => {
  let postgres: TestPostgres;
  let swtpm: Swtpm;
  let first: TestServer;
  let second: TestServer;
  let agent: TestAgent;
  let agentId: string;
  let client: WorkloadApiClient;
  let audiences = 0;

  beforeAll(async () => {
    postgres = await startPostgres();
    swtpm = await startSwtpm();
    const shared = {
      // Over the cluster's Unix socket: TLS has nothing to protect there.
      datastore: {
        type: 'postgres' as const,
        connection_string: postgres.connectionString,
        tls: { mode: 'disable' as const },
      },
      tpm_attestation: { measured_boot: 'none' as const, ek_trust: 'any' as const, reattest_interval: '2s' },
    };
    first = await startAttestServer(shared);
    second = await startAttestServer(shared);
    const socketPath = workloadSocketPath();
    agent = await startTestAgent(first, {
      server_address: undefined,
      server_addresses: [first.address, second.address],
      tcti: swtpm.tcti,
      socket_path: socketPath,
      sync_interval: '200ms',
    });
    agentId = (await until('the agent to attest', () => healthy(agent))).spiffe_id;
    await first.server.datastore.createEntry(
      entry('/failover/shared', agentId, [`unix:uid:${process.getuid?.() ?? 0}`]),
      'test',
    );
    await workloadWhere(agent, 'the workload SVID', (w) => w.svids === 1);
    client = new WorkloadApiClient({ address: `unix://${socketPath}` });
  }, 120_000);

  afterAll(async () => {
    client?.close();
    await agent?.stop();
    await first?.stop();
    await second?.stop();
    await swtpm?.stop();
    await postgres?.stop();
    await removeHsm();
  });

  /** Whether `server` minted a JWT-SVID for a new audience asked through the agent. */
  async function mintedBy(server: TestServer): Promise<boolean> {
    const audience = `shared-${++audiences}`;
    const token = await client.fetchJwtSvid({ audience: [audience] });
    expect(token.id.toString()).toBe(`spiffe://${TD}/failover/shared`);
    return server.logs.lines.some(
      (l) =>
        l.msg === 'workload JWT-SVID issued' && Array.isArray(l.audience) && l.audience.includes(audience),
    );
  }

  /** Re-quote streams of this agent that `server` saw opened. */
  function streams(server: TestServer): number {
    return server.logs.lines.filter((l) => l.msg === 're-quote stream opened' && l.agent_id === agentId)
      .length;
  }

  async function requotesPass(count: number): Promise<void> {
    const passed = agent.agent.status().reattest?.passed ?? 0;
    await until(`${count} more passing re-quotes`, () =>
      (agent.agent.status().reattest?.passed ?? 0) >= passed + count ? true : undefined,
    );
  }

  it('both servers serve one CA: the second presents an SVID the first one’s bundle verifies', () => {
    expect(readFileSync(second.bundleFile, 'utf8')).toBe(readFileSync(first.bundleFile, 'utf8'));
  });

  it('works with the first server while it runs: syncs, re-quotes, JWT-SVIDs', async () => {
    expect(agent.agent.status().server_address).toBe(first.address);
    await until('the re-quote stream on the first server', () => (streams(first) > 0 ? true : undefined));
    await requotesPass(1);
    expect(await mintedBy(first)).toBe(true);
    expect(streams(second)).toBe(0);
  });

  it('when the first server stops, carries on with the second: same node, re-quotes and JWT-SVIDs there', async () => {
    const firstLine = agent.logs.lines.length;
    await first.down();
    await until('the re-quote stream on the second server', () => (streams(second) > 0 ? true : undefined));
    await requotesPass(2);
    const syncs = agent.agent.status().workload?.syncs ?? 0;
    await until('two sync rounds on the second server', () =>
      (agent.agent.status().workload?.syncs ?? 0) >= syncs + 2 ? true : undefined,
    );
    expect(await mintedBy(second)).toBe(true);
    const status = agent.agent.status();
    expect(status).toMatchObject({
      server_address: second.address,
      spiffe_id: agentId,
      healthy: true,
      attestations: 1,
      reattest: { trusted: true, failed: 0 },
    });
    const after = agent.logs.lines.slice(firstLine);
    expect(after.filter((l) => l.msg === CHANGED)).toEqual([
      expect.objectContaining({ server_address: second.address, previous_server_address: first.address }),
    ]);
    expect(after.filter((l) => l.msg === UNREACHABLE)).toEqual([]);
    // The node record is the one both servers read: trusted, with the first attestation's SVID line.
    expect((await second.server.datastore.getNode(agentId))?.trust.state).toBe('trusted');
  }, 60_000);

  it('returns to the first server when the second stops after the first is back', async () => {
    await first.up();
    await second.down();
    const opened = streams(first);
    await until('the re-quote stream back on the first server', () =>
      streams(first) > opened ? true : undefined,
    );
    await requotesPass(1);
    expect(await mintedBy(first)).toBe(true);
    expect(agent.agent.status()).toMatchObject({
      server_address: first.address,
      healthy: true,
      attestations: 1,
    });
    await second.up();
  }, 60_000);

  it('a refusal (the node banned) stays with the server in use: the other server is not asked', async () => {
    const refused = (server: TestServer) =>
      server.logs.lines.filter((l) => l.method === 'FetchEntries' && l.result === 'refused');
    const secondBefore = second.logs.lines.length;
    // Written through the other server's datastore: the server in use keeps the node record between
    // calls, and must see the ban all the same.
    await second.server.datastore.banNode({ spiffeId: agentId }, 'test');
    await until('two sync rounds refused by the first server', () =>
      refused(first).filter((l) => l.reason === 'ERR_ATTEST_BANNED').length >= 2 ? true : undefined,
    );
    // Whatever the second server logged since the ban: none of it is this agent's.
    expect(
      second.logs.lines.slice(secondBefore).filter((l) => l.agent_id === agentId || l.method !== undefined),
    ).toEqual([]);
    expect(agent.agent.status()).toMatchObject({
      server_address: first.address,
      last_error: { code: 'ERR_ATTEST_BANNED' },
    });
  }, 60_000);
});
