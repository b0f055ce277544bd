/**
 * The node records the sync calls admit agents by are kept in memory between calls (NodeCache),
 * and the entry journal's refresh drops those the audit log names. These tests hold the copy to
 * the store: after every kind of node write, on SQLite and on a PostgreSQL shared by two servers,
 * the node read after the next refresh is the stored one, and it was read from memory otherwise.
 */
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import BetterSqlite3 from 'better-sqlite3';
import pg from 'pg';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { EntryJournal } from '../../src/server/agentapi/entries.js';
import type { SyncedNode } from '../../src/server/agentapi/nodes.js';
import { systemClock } from '../../src/server/clock.js';
import {
  type AttestedNode,
  type Datastore,
  type NodeRecord,
  openSqliteDatastore,
} from '../../src/server/datastore/index.js';
import { openPostgresDatastore } from '../../src/server/datastore/postgres.js';
import { startPostgres, type TestPostgres } from '../helpers/postgres.js';

const TD = 'spiffe://example.org';
const SERVER = `${TD}/ironroot/server`;
const NODE = `${TD}/agent/tpm/ab`;
const NOW = 1_800_000_000;

function nodeRecord(overrides: Partial<NodeRecord> = {}): NodeRecord {
  return {
    spiffeId: NODE,
    attestationType: 'tpm',
    serialNumber: 'a1',
    attestationCount: 1,
    expiresAt: NOW + 3600,
    selectors: [{ type: 'tpm', value: 'pcr:a' }],
    tpm: { ekHash: 'ab', akPublic: new Uint8Array([1]), resetCount: 1 },
    createdAt: NOW,
    ...overrides,
  };
}

/** What the sync calls may see of a stored node: everything but its quote state. */
function synced(node: AttestedNode | undefined): SyncedNode | undefined {
  if (node === undefined) return undefined;
  const { tpm: _quoteState, ...rest } = node;
  return rest;
}

/** A gate a wrapped store method waits at before it answers; `open` lets it through. */
function gate(): { passed: Promise<void>; open: () => void } {
  let open: () => void = () => undefined;
  const passed = new Promise<void>((resolve) => {
    open = resolve;
  });
  return { passed, open };
}

/**
 * `store` with `method` answering only once `until` resolves: it reads `after` the wait (what it
 * answers is what is stored then) or before it (what was stored when it was called). `called`
 * resolves at the first call.
 */
function delayed(
  store: Datastore,
  method: 'getNode' | 'changesSince' | 'settledAuditHead',
  until: Promise<void>,
  reads: 'before' | 'after' = 'before',
): { store: Datastore; called: Promise<void> } {
  const first = gate();
  const wrapped = new Proxy(store, {
    get(target, property) {
      const value = Reflect.get(target, property, target);
      if (typeof value !== 'function') return value;
      if (property !== method) return value.bind(target);
      return async (...args: unknown[]) => {
        first.open();
        if (reads === 'after') await until;
        const answer = await value.apply(target, args);
        if (reads === 'before') await until;
        return answer;
      };
    },
  });
  return { store: wrapped, called: first.passed };
}

describe('node records kept for the sync calls (SQLite)', () => {
  const stores: Datastore[] = [];
  afterEach(async () => {
    for (const store of stores.splice(0)) await store.close();
  });
  async function sqlite(): Promise<{ store: Datastore; path: string }> {
    const opened = await openSqliteDatastore(
      join(mkdtempSync(join(tmpdir(), 'ironroot-nodes-')), 'data'),
      systemClock,
    );
    stores.push(opened.datastore);
    return { store: opened.datastore, path: opened.path };
  }

  it('answers a node from memory until the audit log names it, after every kind of node write', async () => {
    const { store } = await sqlite();
    const journal = new EntryJournal(store, SERVER);
    await store.upsertNode(nodeRecord(), 'agent-api');
    await journal.refresh();
    expect(await journal.nodes.node(NODE)).toEqual(synced(await store.getNode(NODE)));
    expect(await journal.nodes.node(NODE)).toEqual(synced(await store.getNode(NODE)));
    await journal.refresh();
    expect(journal.nodes.reads).toBe(1);

    const writes: [string, () => Promise<unknown>][] = [
      [
        'renewal',
        () =>
          store.renewNode(NODE, { admittedSerial: 'a1', newSerialNumber: 'b2', expiresAt: NOW + 7200 }, 'a'),
      ],
      ['serial promotion', () => store.promoteNodeSerial(NODE, 'b2', 'a')],
      [
        'trust change',
        () =>
          store.recordNodeTrust(NODE, { trust: { state: 'untrusted', code: 'ERR_X', changedAt: NOW } }, 'a'),
      ],
      ['ban', () => store.banNode({ spiffeId: NODE }, 'uid:0')],
      ['unban', () => store.unbanNode(NODE, 'uid:0')],
      ['attestation', () => store.upsertNode(nodeRecord({ serialNumber: 'c3', selectors: [] }), 'agent-api')],
      ['eviction', () => store.deleteNode(NODE, 'uid:0')],
    ];
    for (const [i, [what, write]] of writes.entries()) {
      const before = await journal.nodes.node(NODE);
      await write();
      // Until the refresh, the copy read before the write.
      expect(await journal.nodes.node(NODE), what).toBe(before);
      await journal.refresh();
      expect(await journal.nodes.node(NODE), what).toEqual(synced(await store.getNode(NODE)));
      expect(journal.nodes.reads, what).toBe(2 + i);
    }
    expect(await journal.nodes.node(NODE)).toBeUndefined();
  });

  it('keeps a node across a re-quote that changes no trust, and keeps none of its quote state', async () => {
    const { store } = await sqlite();
    const journal = new EntryJournal(store, SERVER);
    await store.upsertNode(nodeRecord(), 'agent-api');
    await journal.refresh();
    const kept = await journal.nodes.node(NODE);
    expect(kept).not.toHaveProperty('tpm');
    const quote = { lastQuote: Buffer.from('{}'), resetCount: 2, eventLog: new Uint8Array([1]) };
    await store.recordNodeTrust(
      NODE,
      { trust: { state: 'trusted', changedAt: NOW }, tpm: quote },
      'reattest',
    );
    await journal.refresh();
    expect(await journal.nodes.node(NODE)).toBe(kept);
    expect(kept).toEqual(synced(await store.getNode(NODE)));
    expect(journal.nodes.reads).toBe(1);
  });

  it('drops every node when the audit log has a gap it cannot bridge', async () => {
    const { store, path } = await sqlite();
    const journal = new EntryJournal(store, SERVER);
    await store.upsertNode(nodeRecord(), 'agent-api');
    await journal.refresh();
    await journal.nodes.node(NODE);
    await store.banNode({ spiffeId: NODE }, 'uid:0');
    await store.createJoinToken({ tokenHash: 'f'.repeat(64), expiresAt: NOW }, 'uid:0');
    const raw = new BetterSqlite3(path);
    raw.prepare("DELETE FROM audit_log WHERE action = 'node.ban'").run();
    raw.close();
    await journal.refresh();
    expect(journal.loads).toBe(2);
    expect((await journal.nodes.node(NODE))?.banned).toBe(true);
  });

  it('does not keep a read that a drop overlapped: it may predate the write', async () => {
    const { store } = await sqlite();
    await store.upsertNode(nodeRecord(), 'agent-api');
    const slow = gate();
    const { store: slowReads, called } = delayed(store, 'getNode', slow.passed);
    const journal = new EntryJournal(slowReads, SERVER);
    await journal.refresh();
    const reading = journal.nodes.node(NODE);
    await called;
    // Written and refreshed while the read, which saw the node unbanned, has not answered.
    await store.banNode({ spiffeId: NODE }, 'uid:0');
    await journal.refresh();
    slow.open();
    expect((await reading)?.banned).toBe(false);
    expect((await journal.nodes.node(NODE))?.banned).toBe(true);
    expect(journal.nodes.reads).toBe(2);
  });

  it('does not keep a node read while a full read waits for the log, before a write the read then covers', async () => {
    const { store } = await sqlite();
    await store.upsertNode(nodeRecord(), 'agent-api');
    const slow = gate();
    const { store: slowHead, called } = delayed(store, 'settledAuditHead', slow.passed, 'after');
    const journal = new EntryJournal(slowHead, SERVER);
    const loading = journal.refresh();
    await called;
    expect((await journal.nodes.node(NODE))?.banned).toBe(false);
    await store.banNode({ spiffeId: NODE }, 'uid:0');
    slow.open();
    await loading;
    expect((await journal.nodes.node(NODE))?.banned).toBe(true);
  });

  it('a refresh asked for while one runs starts after it, and sees what committed meanwhile', async () => {
    const { store } = await sqlite();
    await store.upsertNode(nodeRecord(), 'agent-api');
    const warm = new EntryJournal(store, SERVER);
    await warm.refresh();
    const slow = gate();
    const { store: slowLog, called } = delayed(store, 'changesSince', slow.passed);
    const journal = new EntryJournal(slowLog, SERVER);
    // The first refresh reads everything; the second is the one held after reading the log.
    await journal.refresh();
    expect((await journal.nodes.node(NODE))?.banned).toBe(false);
    const running = journal.refresh();
    await called;
    await store.banNode({ spiffeId: NODE }, 'uid:0');
    const asked = journal.refresh();
    const askedToo = journal.refresh();
    expect(askedToo).toBe(asked);
    slow.open();
    await running;
    await asked;
    expect((await journal.nodes.node(NODE))?.banned).toBe(true);
  });
});

describe('node records kept for the sync calls (PostgreSQL shared by two servers)', () => {
  let postgres: TestPostgres | undefined;
  let databases = 0;
  afterAll(async () => {
    await postgres?.stop();
  });
  async function twoServers(): Promise<{ url: string; a: Datastore; b: Datastore }> {
    postgres ??= await startPostgres();
    const url = await postgres.createDatabase(`ironroot_nodes_${++databases}`);
    const a = (await openPostgresDatastore(url, systemClock)).datastore;
    const b = (await openPostgresDatastore(url, systemClock)).datastore;
    return { url, a, b };
  }

  it('sees a promotion, a ban and an eviction the other server wrote at its next refresh', async () => {
    const { a, b } = await twoServers();
    try {
      const journal = new EntryJournal(a, SERVER);
      await a.upsertNode(nodeRecord({ newSerialNumber: 'b2' }), 'agent-api');
      await journal.refresh();
      expect((await journal.nodes.node(NODE))?.serialNumber).toBe('a1');
      expect(await b.promoteNodeSerial(NODE, 'b2', 'agent-api')).toBe(true);
      await journal.refresh();
      expect((await journal.nodes.node(NODE))?.serialNumber).toBe('b2');
      await b.banNode({ spiffeId: NODE }, 'uid:0');
      await journal.refresh();
      expect((await journal.nodes.node(NODE))?.banned).toBe(true);
      await b.deleteNode(NODE, 'uid:0');
      await journal.refresh();
      expect(await journal.nodes.node(NODE)).toBeUndefined();
    } finally {
      await a.close();
      await b.close();
    }
  });

  it('waits for a ban whose audit id is below one already committed, instead of missing it', async () => {
    const { url, a, b } = await twoServers();
    const held = new pg.Client({ connectionString: url });
    await held.connect();
    try {
      const journal = new EntryJournal(a, SERVER);
      await a.upsertNode(nodeRecord(), 'agent-api');
      await journal.refresh();
      expect((await journal.nodes.node(NODE))?.banned).toBe(false);
      // Another server's ban takes its audit id, and commits only after a later record did.
      await held.query('BEGIN');
      await held.query('INSERT INTO banned_nodes (spiffe_id, ek_hash, banned_at) VALUES ($1, NULL, $2)', [
        NODE,
        NOW,
      ]);
      await held.query(
        "INSERT INTO audit_log (at, actor, action, object_type, object_id, detail) VALUES ($1, 'uid:0', 'node.ban', 'node', $2, '{}')",
        [NOW, NODE],
      );
      await b.createJoinToken({ tokenHash: 'e'.repeat(64), expiresAt: NOW }, 'uid:0');
      let refreshed = false;
      const refreshing = journal.refresh().then(() => {
        refreshed = true;
      });
      await new Promise((resolve) => setTimeout(resolve, 300));
      expect(refreshed).toBe(false);
      await held.query('COMMIT');
      await refreshing;
      expect((await journal.nodes.node(NODE))?.banned).toBe(true);
    } finally {
      await held.end();
      await a.close();
      await b.close();
    }
  });
});
