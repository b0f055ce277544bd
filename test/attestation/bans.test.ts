import { status } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { AgentMessage } from '../../src/server/admin/messages.js';
import { ekPublicKeyHash, Tpm, withEk } from '../../src/tpm/index.js';
import type { X509SVIDResponseMessage } from '../../src/workload-api/proto.js';
import { RawClient } from '../helpers/raw-client.js';
import { cli } from '../helpers/server.js';
import { type Swtpm, startSwtpm } from '../helpers/swtpm.js';
import { entry, workloadSocketPath, workloadWhere } from '../workload/harness.js';
import { evilAttest } from './evil-agent.js';
import {
  healthy,
  startAttestServer,
  startTestAgent,
  TD,
  type TestAgent,
  type TestServer,
  until,
} from './harness.js';

let server: TestServer;
const swtpms: Swtpm[] = [];

beforeAll(async () => {
  server = await startAttestServer({ tpm_attestation: { measured_boot: 'none', ek_trust: 'any' } });
});

afterAll(async () => {
  await server?.stop();
  for (const swtpm of swtpms) await swtpm.stop();
});

async function freshTpm(): Promise<Swtpm> {
  const swtpm = await startSwtpm();
  swtpms.push(swtpm);
  return swtpm;
}

const admin = (...args: string[]) => cli([...args, '--admin-socket', server.adminSocket]);

async function shown(agentId: string): Promise<AgentMessage> {
  const result = await admin('agent', 'show', '--spiffe-id', agentId, '--output', 'json');
  expect(result.stderr).toBe('');
  return JSON.parse(result.stdout) as AgentMessage;
}

async function ekHashOf(swtpm: Swtpm): Promise<string> {
  const tpm = await Tpm.open(swtpm.tcti);
  try {
    return await withEk(tpm, 'rsa2048', async (ek) => ekPublicKeyHash(ek.public.area));
  } finally {
    await tpm.close();
  }
}

/** The agent's attestation was refused for the ban, as the server logged it. */
async function refusedAsBanned(agent: TestAgent, agentId: string): Promise<void> {
  await until('the agent to be refused as banned', () =>
    agent.agent.status().last_error?.code === 'ERR_ATTEST_BANNED' ? true : undefined,
  );
  expect(
    server.logs
      .decisions()
      .some(
        (d) =>
          d.agent_id === agentId &&
          d.operation === 'attest' &&
          d.result === 'refused' &&
          d.reason === 'ERR_ATTEST_BANNED',
      ),
  ).toBe(true);
}

function banAudit(agentId: string) {
  return server.server.datastore.listAudit(1000).then((records) =>
    records
      .filter((r) => r.objectId === agentId && (r.action === 'node.ban' || r.action === 'node.unban'))
      .map((r) => r.action)
      .reverse(),
  );
}

describe('agent bans', () => {
  it('a ban survives eviction: the evicted agent is refused when it attests again, until unbanned', async () => {
    const swtpm = await freshTpm();
    const agent = await startTestAgent(server, { tcti: swtpm.tcti });
    try {
      const agentId = (await until('the agent to attest', () => healthy(agent))).spiffe_id;
      expect((await admin('agent', 'ban', '--spiffe-id', agentId)).stdout.trim()).toBe(
        `Banned agent ${agentId}`,
      );
      expect((await admin('agent', 'evict', '--spiffe-id', agentId)).stdout.trim()).toBe(
        `Evicted agent ${agentId}`,
      );

      // Still banned, though no node record is left.
      expect(await shown(agentId)).toMatchObject({ spiffe_id: agentId, attestation_type: '', banned: true });
      const text = (await admin('agent', 'show', '--spiffe-id', agentId)).stdout;
      expect(text).toContain(
        'Attestation type  : none (not attested)\nBanned            : true\nBanned since      : ',
      );
      const listed = JSON.parse((await admin('agent', 'list', '--banned', '--output', 'json')).stdout) as {
        agents: AgentMessage[];
      };
      expect(listed.agents.map((a) => a.spiffe_id)).toContain(agentId);

      // The agent learns it was evicted and attests again: refused by name.
      await refusedAsBanned(agent, agentId);
      expect(await server.server.datastore.getNode(agentId)).toBeUndefined();

      expect((await admin('agent', 'unban', '--spiffe-id', agentId)).stdout.trim()).toBe(
        `Unbanned agent ${agentId}`,
      );
      await until('the agent to attest again', () =>
        agent.agent.status().attestations >= 2 && healthy(agent) ? true : undefined,
      );
      expect((await shown(agentId)).banned).toBe(false);
      expect(await banAudit(agentId)).toEqual(['node.ban', 'node.unban']);
    } finally {
      await agent.stop();
    }
  });

  it('a banned agent stops serving its workloads at its next call, also after a restart, and serves them again once unbanned', async () => {
    const swtpm = await freshTpm();
    const agent = await startTestAgent(server, {
      tcti: swtpm.tcti,
      socket_path: workloadSocketPath(),
      sync_interval: '200ms',
    });
    const workloads = new RawClient(agent.config.socket_path ?? '');
    const servedIds = async () => {
      const stream = workloads.stream<X509SVIDResponseMessage>('FetchX509SVID');
      const [served] = await stream.waitFor(1);
      stream.cancel();
      return served?.svids.map((svid) => svid.spiffe_id);
    };
    const refused = async () => {
      const stream = workloads.stream<X509SVIDResponseMessage>('FetchX509SVID');
      expect((await stream.ended).code).toBe(status.PERMISSION_DENIED);
      expect(stream.messages).toEqual([]);
      await expect(workloads.unary('FetchJWTSVID', { audience: ['reports'] })).rejects.toMatchObject({
        code: status.PERMISSION_DENIED,
      });
    };
    try {
      const agentId = (await until('the agent to attest', () => healthy(agent))).spiffe_id;
      await server.server.datastore.createEntry(
        entry('/banned-workload', agentId, [`unix:uid:${process.getuid?.() ?? 0}`]),
        'test',
      );
      await workloadWhere(agent, 'the workload SVID in the cache', (w) => w.svids === 1);
      const open = workloads.stream<X509SVIDResponseMessage>('FetchX509SVID');
      expect((await open.waitFor(1))[0]?.svids.map((svid) => svid.spiffe_id)).toEqual([
        `spiffe://${TD}/banned-workload`,
      ]);

      await admin('agent', 'ban', '--spiffe-id', agentId);
      // The open stream ends as for a caller entitled to nothing, and nothing new is handed out.
      expect((await open.ended).code).toBe(status.PERMISSION_DENIED);
      await refused();
      expect(agent.agent.status().reattest).toMatchObject({ trusted: false, code: 'ERR_ATTEST_BANNED' });
      expect(agent.agent.status().suspended).toMatchObject({
        code: 'ERR_ATTEST_BANNED',
        reason: expect.stringContaining('is banned'),
      });
      expect(agent.logs.text()).toContain(
        'the server refuses this agent as banned: serving no identity until it is unbanned',
      );

      // Restarted while banned, it serves nothing from its persisted cache.
      await agent.restart();
      await refused();
      expect(agent.logs.text()).toContain(
        'the agent was banned when it stopped: serving no identity until it is unbanned',
      );
      expect(agent.agent.status().suspended).toMatchObject({ code: 'ERR_ATTEST_BANNED' });

      await admin('agent', 'unban', '--spiffe-id', agentId);
      await until('the workload to be served again', () =>
        agent.agent.status().workload?.svids === 1 ? true : undefined,
      );
      expect(await servedIds()).toEqual([`spiffe://${TD}/banned-workload`]);
      expect(agent.agent.status().reattest).toMatchObject({ trusted: true, code: '' });
      expect(agent.agent.status().suspended).toBeNull();
      expect(agent.agent.status().attestations).toBe(0);
    } finally {
      workloads.close();
      await agent.stop();
    }
  });

  it('bans a TPM by EK hash before its first attestation; unban lets it attest', async () => {
    const swtpm = await freshTpm();
    const ekHash = await ekHashOf(swtpm);
    const agentId = `spiffe://${TD}/agent/tpm/${ekHash}`;
    // Any case of hex is taken; the ID is named by the lowercase hash, as attestation names it.
    const banned = await admin('agent', 'ban', '--ek-hash', ekHash.toUpperCase());
    expect(banned.stderr).toBe('');
    expect(banned.stdout.trim()).toBe(`Banned agent ${agentId}`);
    expect(await shown(agentId)).toMatchObject({ attestation_type: '', banned: true, ek_hash: ekHash });

    const agent = await startTestAgent(server, { tcti: swtpm.tcti });
    try {
      await refusedAsBanned(agent, agentId);
      expect(agent.agent.status().attestations).toBe(0);
      expect(await server.server.datastore.getNode(agentId)).toBeUndefined();

      expect((await admin('agent', 'unban', '--spiffe-id', agentId)).stdout.trim()).toBe(
        `Unbanned agent ${agentId}`,
      );
      const attested = await until('the agent to attest once unbanned', () => healthy(agent));
      expect(attested.spiffe_id).toBe(agentId);
      expect(await shown(agentId)).toMatchObject({ attestation_type: 'tpm', banned: false, banned_at: 0 });
      expect(await banAudit(agentId)).toEqual(['node.ban', 'node.unban']);
    } finally {
      await agent.stop();
    }
  });

  it('bans an attested TPM by its EK hash: its next attestation is refused', async () => {
    const swtpm = await freshTpm();
    const first = await evilAttest(server, swtpm.tcti);
    const agentId = first.result?.spiffe_id ?? '';
    const ekHash = agentId.split('/').pop() ?? '';
    expect((await admin('agent', 'ban', '--ek-hash', ekHash)).stdout.trim()).toBe(`Banned agent ${agentId}`);
    expect(await shown(agentId)).toMatchObject({ attestation_type: 'tpm', banned: true });
    expect((await evilAttest(server, swtpm.tcti)).error?.code).toBe('ERR_ATTEST_BANNED');
  });

  it.each([
    [
      'neither --spiffe-id nor --ek-hash',
      [],
      { spiffe_id: '', ek_hash: '' },
      'ERR_INVALID_ARGUMENT',
      'give the agent to ban by exactly one of spiffe_id (--spiffe-id) or ek_hash (--ek-hash)',
    ],
    [
      'both',
      ['--spiffe-id', `spiffe://${TD}/agent/tpm/${'a'.repeat(64)}`, '--ek-hash', 'a'.repeat(64)],
      { spiffe_id: `spiffe://${TD}/agent/tpm/${'a'.repeat(64)}`, ek_hash: 'a'.repeat(64) },
      'ERR_INVALID_ARGUMENT',
      'give the agent to ban by exactly one of spiffe_id (--spiffe-id) or ek_hash (--ek-hash)',
    ],
    [
      'an EK hash that is not 64 hex digits',
      ['--ek-hash', 'abc'],
      { spiffe_id: '', ek_hash: 'abc' },
      'ERR_EK_HASH_INVALID',
      `ek_hash "abc" is not an EK hash: give the SHA-256 of the EK's SubjectPublicKeyInfo as 64 hex digits (the node's tpm:ek-hash selector, or the EK's public key SHA-256 in "ironroot-agent tpm info" on the node)`,
    ],
    [
      'a SPIFFE ID that names no agent',
      ['--spiffe-id', `spiffe://${TD}/web`],
      { spiffe_id: `spiffe://${TD}/web`, ek_hash: '' },
      'ERR_AGENT_ID_INVALID',
      `spiffe_id "spiffe://${TD}/web" names no agent: agents are spiffe://${TD}/agent/tpm/<EK hash> or spiffe://${TD}/agent/join_token/<token hash>; see "agent list", or ban a TPM by --ek-hash`,
    ],
  ])('refuses to ban with %s, by name', async (_name, flags, request, code, message) => {
    const result = await admin('agent', 'ban', ...flags);
    expect(result.code).toBe(1);
    expect(result.stdout).toBe('');
    expect(result.stderr).toBe(`Error (${code}): ${message}\n`);
    await expect(server.registration.banAgent(request, 'test')).rejects.toMatchObject({ code, message });
  });
});
