import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SvidCache } from '../../src/agent/cache.js';
import { AgentApiClient } from '../../src/agent/client.js';
import { EntryJournal } from '../../src/server/agentapi/entries.js';
import { ENTRY_PAGE_SIZE } from '../../src/server/agentapi/sync.js';
import { SpiffeId } from '../../src/spiffe/index.js';
import { newKeyPair } from '../../src/spiffe/new-key-pair.js';
import { startAttestServer, TD, type TestServer } from '../attestation/harness.js';
import { entry, SERVER_ID } from './harness.js';

const ENTRIES = 20_000;
const AGENT_ID = `spiffe://${TD}/agent/join_token/5ca1e0000000`;

/** Entries sent by the server's FetchEntries, by sync kind, from its Prometheus counter. */
async function entriesSent(server: TestServer, sync: 'full' | 'incremental'): Promise<number> {
  const metric = await server.server.health.inject({ method: 'GET', url: '/metrics' });
  const line = metric.body
    .split('\n')
    .find((l) => l.startsWith(`ironroot_agent_entries_sent_total{sync="${sync}"}`));
  return Number(line?.split(' ')[1] ?? 0);
}

/**
 * The server's side of entry sync at scale, through the agent's own client and cache. The caller is
 * an agent the server knows (a node record and an agent SVID from its CA), but no agent process:
 * a running agent would also issue 20 000 SVIDs, which is SVID issuance, not what this measures.
 */
describe(`entry sync at ${ENTRIES} entries`, () => {
  let server: TestServer;
  let client: AgentApiClient;

  beforeAll(async () => {
    server = await startAttestServer();
    const ds = server.server.datastore;
    const { privateKey, publicKey } = newKeyPair('ec', { namedCurve: 'P-256' });
    const svid = await server.server.ca.mintX509Svid({
      spiffeId: SpiffeId.parse(AGENT_ID),
      publicKey,
      ttl: 3600,
    });
    await ds.upsertNode(
      {
        spiffeId: AGENT_ID,
        attestationType: 'join_token',
        // The agent API accepts only the node's current certificate.
        serialNumber: svid.chain[0]?.serialNumber ?? '',
        expiresAt: Math.floor(Date.now() / 1000) + 3600,
        selectors: [{ type: 'join_token', value: '5ca1e0000000' }],
        attestationCount: 1,
        createdAt: Math.floor(Date.now() / 1000),
      },
      'test',
    );
    const alias = await ds.createEntry(entry('/node/scale', SERVER_ID, ['join_token:5ca1e0000000']), 'test');
    for (let i = 0; i < ENTRIES; i++)
      await ds.createEntry(entry(`/scale/${i}`, alias.spiffeId, [`unix:uid:${100_000 + i}`]), 'test');
    client = new AgentApiClient({
      address: server.address,
      trustDomain: TD,
      bundlePem: readFileSync(server.bundleFile, 'utf8'),
      identity: {
        keyPem: privateKey.export({ format: 'pem', type: 'pkcs8' }).toString(),
        chainPem: svid.chain.map((c) => c.toString()).join(''),
      },
    });
  }, 300_000);

  afterAll(async () => {
    client?.close();
    await server?.stop();
  });

  it('delivers every entry in pages, then only the one changed entry on the next sync', async () => {
    const cache = new SvidCache({
      trustDomain: TD,
      attestors: [],
      bootstrapRoots: [],
      mintJwt: () => Promise.reject(new Error('not used')),
    });
    const full = await client.fetchEntries(undefined);
    expect(full.full).toBe(true);
    expect(full.entries).toHaveLength(ENTRIES);
    expect(full.pages).toBe(Math.ceil(ENTRIES / ENTRY_PAGE_SIZE));
    expect(new Set(full.entries.map((e) => e.spiffe_id)).size).toBe(ENTRIES);
    cache.applyEntries(full);
    expect(cache.entryCount).toBe(ENTRIES);

    // Nothing changed: nothing is sent.
    const quiet = await client.fetchEntries(full.cursor);
    expect(quiet).toMatchObject({ full: false, entries: [], deletedIds: [] });

    const incrementalBefore = await entriesSent(server, 'incremental');
    const fullBefore = await entriesSent(server, 'full');
    const ds = server.server.datastore;
    const target = (await ds.listEntries({ spiffeId: `spiffe://${TD}/scale/7` })).entries[0];
    if (target === undefined) throw new Error('entry /scale/7 not found');
    await ds.updateEntry(target.id, { ...target, selectors: [{ type: 'unix', value: 'uid:99' }] }, 'test');

    const one = await client.fetchEntries(quiet.cursor);
    expect(one.full).toBe(false);
    expect(one.pages).toBe(1);
    expect(one.deletedIds).toEqual([]);
    expect(one.entries.map((e) => [e.id, e.selectors])).toEqual([[target.id, ['unix:uid:99']]]);
    expect((await entriesSent(server, 'incremental')) - incrementalBefore).toBe(1);
    expect(await entriesSent(server, 'full')).toBe(fullBefore);
    expect(cache.applyEntries(one)).toBe(true);
    expect(cache.entryCount).toBe(ENTRIES);

    // A deletion travels as its ID alone.
    await ds.deleteEntry(target.id, 'test');
    const gone = await client.fetchEntries(one.cursor);
    expect(gone).toMatchObject({ full: false, entries: [], deletedIds: [target.id] });
    cache.applyEntries(gone);
    expect(cache.entryCount).toBe(ENTRIES - 1);
  }, 120_000);

  it('leaves an agent that applies each answer after writes holding what a fresh server sends in full', async () => {
    const ds = server.server.datastore;
    const held = new Map<string, unknown>();
    const apply = (sync: Awaited<ReturnType<AgentApiClient['fetchEntries']>>) => {
      if (sync.full) held.clear();
      for (const id of sync.deletedIds) held.delete(id);
      for (const e of sync.entries) held.set(e.id, e);
    };
    /** A fresh server's full answer: a journal that has just read every entry, as entry messages. */
    const freshAnswer = async () => {
      const journal = new EntryJournal(ds, SERVER_ID);
      await journal.refresh();
      const now = Math.floor(Date.now() / 1000);
      const authorization = journal.authorize(AGENT_ID, [{ type: 'join_token', value: '5ca1e0000000' }], now);
      const full = await client.fetchEntries(undefined);
      // The running server's own full answer, through gRPC, is the same set as the fresh journal's.
      expect(full.entries.map((e) => e.id).sort()).toEqual([...authorization.entries.keys()].sort());
      return new Map(full.entries.map((e) => [e.id, e]));
    };
    const first = await client.fetchEntries(undefined);
    apply(first);
    let cursor = first.cursor;
    const byPath = async (path: string) => {
      const found = (await ds.listEntries({ spiffeId: `spiffe://${TD}${path}` })).entries[0];
      if (found === undefined) throw new Error(`entry ${path} not found`);
      return found;
    };
    const alias = await byPath('/node/scale');
    const other = `spiffe://${TD}/agent/join_token/0the40000000`;
    // Created under the alias, and under an entry of the agent's; moved to another agent; deleted; updated.
    await ds.createEntry(entry('/scale/new', alias.spiffeId, ['unix:uid:7']), 'test');
    await ds.createEntry(entry('/scale/2/child', `spiffe://${TD}/scale/2`, ['unix:uid:8']), 'test');
    const moved = await byPath('/scale/1');
    await ds.updateEntry(moved.id, { ...moved, parentId: other }, 'test');
    await ds.deleteEntry((await byPath('/scale/3')).id, 'test');
    const hinted = await byPath('/scale/4');
    await ds.updateEntry(hinted.id, { ...hinted, hint: 'changed' }, 'test');
    const after = await client.fetchEntries(cursor);
    expect(after.full).toBe(false);
    expect(after.deletedIds).toEqual(expect.arrayContaining([moved.id]));
    apply(after);
    cursor = after.cursor;
    expect(held).toEqual(await freshAnswer());
    // Moving an entry with a child takes its subtree along: the answer says what to hold in full.
    const parent = await byPath('/scale/2');
    await ds.updateEntry(parent.id, { ...parent, parentId: other }, 'test');
    apply(await client.fetchEntries(cursor));
    expect(held.has(parent.id)).toBe(false);
    expect(held).toEqual(await freshAnswer());
    // Two created; /scale/1 moved and /scale/3 deleted; /scale/2 and its child moved.
    expect(held.size).toBe(first.entries.length + 2 - 2 - 2);
  }, 120_000);
});
