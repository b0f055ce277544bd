import { type KeyObject, X509Certificate } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { AgentApiClient, Identity, Result } from '../../src/agent/client.js';
import { AgentError } from '../../src/agent/errors.js';
import { cli } from '../helpers/server.js';
import { type Swtpm, startSwtpm } from '../helpers/swtpm.js';
import { evilAttest, keyAndCsr } from './evil-agent.js';
import {
  agentApiClient,
  agentIdentity,
  healthy,
  startAttestServer,
  startTestAgent,
  TD,
  type TestServer,
  until,
} from './harness.js';

let swtpm: Swtpm;
let server: TestServer;

beforeAll(async () => {
  swtpm = await startSwtpm();
  // Agent SVIDs live long enough for every old certificate below to be refused for being superseded,
  // not for having expired; the real agent renews at about half of it.
  server = await startAttestServer({
    tpm_attestation: { measured_boot: 'none', ek_trust: 'any' },
    agent_svid_ttl: '30s',
  });
});

afterAll(async () => {
  await server?.stop();
  await swtpm?.stop();
});

const SUPERSEDED = 'ERR_AGENT_CERT_SUPERSEDED';

function identityOf(key: KeyObject, result: Result): Identity {
  return {
    keyPem: key.export({ format: 'pem', type: 'pkcs8' }).toString(),
    chainPem: result.svid_chain.map((der) => new X509Certificate(der).toString()).join(''),
  };
}

function serialOf(identity: Identity): string {
  return new X509Certificate(identity.chainPem).serialNumber;
}

/** 'accepted', or the code the server refused with. */
function outcome(call: Promise<unknown>): Promise<string> {
  return call.then(
    () => 'accepted',
    (error: unknown) => (error instanceof AgentError ? error.code : String(error)),
  );
}

async function withClient<T>(identity: Identity | undefined, use: (c: AgentApiClient) => Promise<T>) {
  const client = agentApiClient(server, identity);
  try {
    return await use(client);
  } finally {
    client.close();
  }
}

async function attestJoinToken(): Promise<{ agentId: string; identity: Identity }> {
  const token = await server.registration.createJoinToken({ ttl: 0, spiffe_id: '' }, 'test');
  const { key, csr } = await keyAndCsr();
  const result = await withClient(undefined, (c) =>
    c.attest({ method: 'join_token', csr, tpm: null, join_token: token.value }, async () => {
      throw new Error('no challenge expected');
    }),
  );
  return { agentId: result.spiffe_id, identity: identityOf(key, result) };
}

async function renew(identity: Identity): Promise<Identity> {
  const { key, csr } = await keyAndCsr();
  const result = await withClient(identity, (c) =>
    c.renew({ csr, tpm: null }, async () => {
      throw new Error('no challenge expected');
    }),
  );
  return identityOf(key, result);
}

let entries = 0;

/** An entry the agent may have SVIDs for, so that accepted calls succeed outright. */
async function workloadEntry(agentId: string): Promise<string> {
  const entry = await server.server.datastore.createEntry(
    {
      spiffeId: `spiffe://${TD}/serials/${++entries}`,
      parentId: agentId,
      selectors: [{ type: 'unix', value: 'uid:1000' }],
      x509SvidTtl: 0,
      jwtSvidTtl: 0,
      dnsNames: [],
      admin: false,
      downstream: false,
      federatesWith: [],
      hint: '',
      expiresAt: 0,
    },
    'test',
  );
  return entry.id;
}

/** Every agent API call authenticated by the agent SVID but renewal, with `identity`. */
async function calls(identity: Identity, entryId: string): Promise<Record<string, string>> {
  const { csr } = await keyAndCsr();
  return withClient(identity, async (c) => ({
    FetchEntries: await outcome(c.fetchEntries(undefined)),
    BatchNewX509SVID: await outcome(c.batchNewX509Svid([{ entry_id: entryId, csr }])),
    NewJWTSVID: await outcome(c.newJwtSvid(entryId, ['serials'])),
    FetchBundles: await outcome(c.fetchBundles()),
  }));
}

const all = (code: string) => ({
  FetchEntries: code,
  BatchNewX509SVID: code,
  NewJWTSVID: code,
  FetchBundles: code,
});

/** The Reattest stream's refusal; only for certificates that are refused (an accepted stream stays open). */
async function reattestRefusal(identity: Identity): Promise<string> {
  return withClient(identity, async (c) => {
    const call = c.reattest();
    try {
      for await (const _ of call) return 'a challenge';
      return 'ended';
    } catch (error) {
      return c.toError(error).code;
    } finally {
      call.cancel();
    }
  });
}

function supersededLogs(agentId: string): Record<string, unknown>[] {
  return server.logs.lines.filter(
    (l) => l.agent_id === agentId && l.reason === SUPERSEDED && 'presented_serial' in l,
  );
}

describe('agent SVID serials', () => {
  it('after renewal, accepts the old SVID until the new one is first used, then refuses it on every call, logging both serials', async () => {
    const { agentId, identity: old } = await attestJoinToken();
    const entryId = await workloadEntry(agentId);
    const renewed = await renew(old);
    // The renewal is in flight as far as the server knows: both certificates work.
    expect(await server.server.datastore.getNode(agentId)).toMatchObject({
      serialNumber: serialOf(old),
      newSerialNumber: serialOf(renewed),
    });
    expect(await calls(old, entryId)).toEqual(all('accepted'));

    // The agent is seen with the new one: it becomes current, the old one is refused from now on.
    expect(await calls(renewed, entryId)).toEqual(all('accepted'));
    const node = await server.server.datastore.getNode(agentId);
    expect(node?.serialNumber).toBe(serialOf(renewed));
    expect(node?.newSerialNumber).toBeUndefined();
    expect(await calls(old, entryId)).toEqual(all(SUPERSEDED));
    expect(await outcome(renew(old))).toBe(SUPERSEDED);
    expect(await calls(renewed, entryId)).toEqual(all('accepted'));

    const logged = supersededLogs(agentId);
    expect(logged.map((l) => l.method)).toEqual([
      'FetchEntries',
      'BatchNewX509SVID',
      'NewJWTSVID',
      'FetchBundles',
      'RenewAgent',
    ]);
    for (const line of logged)
      expect(line).toMatchObject({ presented_serial: serialOf(old), current_serial: serialOf(renewed) });
  });

  it('a renewal with the old SVID while the new one is unused supersedes that new one (a lost answer)', async () => {
    const { agentId, identity: old } = await attestJoinToken();
    const entryId = await workloadEntry(agentId);
    const lost = await renew(old);
    const again = await renew(old);
    expect(await calls(lost, entryId)).toEqual(all(SUPERSEDED));
    expect(await calls(old, entryId)).toEqual(all('accepted'));
    expect(await calls(again, entryId)).toEqual(all('accepted'));
    expect(await calls(old, entryId)).toEqual(all(SUPERSEDED));
  });

  it('after re-attestation, refuses every earlier SVID at once, the re-quote stream included', async () => {
    const first = await evilAttest(server, swtpm.tcti);
    if (!first.result || !first.key) throw first.error ?? new Error('no result');
    const old = identityOf(first.key, first.result);
    const agentId = first.result.spiffe_id;
    const entryId = await workloadEntry(agentId);
    expect(await calls(old, entryId)).toEqual(all('accepted'));

    const second = await evilAttest(server, swtpm.tcti);
    if (!second.result || !second.key) throw second.error ?? new Error('no result');
    const current = identityOf(second.key, second.result);
    // Refused before the new SVID is ever used: a full attestation leaves no overlap.
    expect(await calls(old, entryId)).toEqual(all(SUPERSEDED));
    expect(await outcome(renew(old))).toBe(SUPERSEDED);
    expect(await reattestRefusal(old)).toBe(SUPERSEDED);
    expect(supersededLogs(agentId).map((l) => l.method)).toContain('Reattest');
    expect(await calls(current, entryId)).toEqual(all('accepted'));
  });

  it('after re-attestation, refuses the earlier SVID on a connection it opened before: the serial is checked per call', async () => {
    const first = await evilAttest(server, swtpm.tcti);
    if (!first.result || !first.key) throw first.error ?? new Error('no result');
    const entryId = await workloadEntry(first.result.spiffe_id);
    // One client, one channel: its TLS session (and the certificate it presented) outlives the re-attestation.
    await withClient(identityOf(first.key, first.result), async (kept) => {
      expect(await outcome(kept.fetchEntries(undefined))).toBe('accepted');
      const second = await evilAttest(server, swtpm.tcti);
      if (!second.result) throw second.error ?? new Error('no result');
      const { csr } = await keyAndCsr();
      expect(await outcome(kept.fetchEntries(undefined))).toBe(SUPERSEDED);
      expect(await outcome(kept.batchNewX509Svid([{ entry_id: entryId, csr }]))).toBe(SUPERSEDED);
      expect(await outcome(kept.fetchBundles())).toBe(SUPERSEDED);
    });
  });

  it('after evict and re-attest, refuses the SVID from before the eviction', async () => {
    const first = await evilAttest(server, swtpm.tcti);
    if (!first.result || !first.key) throw first.error ?? new Error('no result');
    const old = identityOf(first.key, first.result);
    const agentId = first.result.spiffe_id;
    const entryId = await workloadEntry(agentId);
    const evicted = await cli([
      'agent',
      'evict',
      '--admin-socket',
      server.adminSocket,
      '--spiffe-id',
      agentId,
    ]);
    expect(evicted.code).toBe(0);
    expect(await calls(old, entryId)).toEqual(all('ERR_AGENT_NOT_ATTESTED'));

    const again = await evilAttest(server, swtpm.tcti);
    if (!again.result || !again.key) throw again.error ?? new Error('no result');
    expect(again.result.spiffe_id).toBe(agentId);
    expect(await calls(old, entryId)).toEqual(all(SUPERSEDED));
    expect(await outcome(renew(old))).toBe(SUPERSEDED);
    expect(await calls(identityOf(again.key, again.result), entryId)).toEqual(all('accepted'));
  });

  it('a copied join-token agent SVID stops working once the real agent renews, and the real agent carries on', async () => {
    const token = await server.registration.createJoinToken({ ttl: 0, spiffe_id: '' }, 'test');
    const agent = await startTestAgent(server, { attestation: 'join_token', join_token: token.value });
    try {
      const attested = await until('the join-token agent to attest', () => healthy(agent));
      const entryId = await workloadEntry(attested.spiffe_id);
      const copy = agentIdentity(agent.dataDir);
      expect(await calls(copy, entryId)).toEqual(all('accepted'));

      // The real agent renews at half-life and syncs with its new SVID straight away.
      const current = await until('the renewed SVID to become current', async () => {
        if (agent.agent.status().renewals < 1) return undefined;
        const node = await server.server.datastore.getNode(attested.spiffe_id);
        return node?.newSerialNumber === undefined && node?.serialNumber !== serialOf(copy)
          ? node?.serialNumber
          : undefined;
      });
      expect(current).toBe(serialOf(agentIdentity(agent.dataDir)));
      expect(await calls(copy, entryId)).toEqual(all(SUPERSEDED));
      expect(await outcome(renew(copy))).toBe(SUPERSEDED);

      const status = agent.agent.status();
      expect(status).toMatchObject({ state: 'healthy', last_error: null, spiffe_id: attested.spiffe_id });
      expect(status.attestations).toBe(1);
      expect(
        agent.logs.lines.some((l) => l.msg === 'agent SVID renewed' && l.agent_id === attested.spiffe_id),
      ).toBe(true);
    } finally {
      await agent.stop();
    }
  });
});
