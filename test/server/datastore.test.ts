import { execFileSync } from 'node:child_process';
import { closeSync, mkdirSync, mkdtempSync, openSync, rmSync, statSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import BetterSqlite3 from 'better-sqlite3';
import { Kysely, Migrator, SqliteDialect } from 'kysely';
import pg from 'pg';
import { afterAll, afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { Clock } from '../../src/server/clock.js';
import type {
  AttestedNode,
  Datastore,
  NewEntry,
  NodeRecord,
  RegistrationEntry,
} from '../../src/server/datastore/index.js';
import { openSqliteDatastore } from '../../src/server/datastore/index.js';
import { migrationsFor } from '../../src/server/datastore/migrations.js';
import { MIGRATION_LOCK_KEY, openPostgresDatastore } from '../../src/server/datastore/postgres.js';
import {
  AgentNotFoundError,
  EntryDuplicateError,
  EntryNotFoundError,
  NodeAttestedAgainError,
} from '../../src/server/errors.js';
import { startPostgres, type TestPostgres } from '../helpers/postgres.js';

const TD = 'spiffe://example.org';

function entry(overrides: Partial<NewEntry> = {}): NewEntry {
  return {
    spiffeId: `${TD}/workload`,
    parentId: `${TD}/agent/a`,
    selectors: [{ type: 'unix', value: 'uid:1000' }],
    x509SvidTtl: 0,
    jwtSvidTtl: 0,
    dnsNames: [],
    admin: false,
    downstream: false,
    federatesWith: [],
    hint: '',
    expiresAt: 0,
    ...overrides,
  };
}

/** A TPM node's record as an attestation writes it; `overrides` hold what a test is about. */
function tpmNodeRecord(spiffeId: string, overrides: Partial<NodeRecord> = {}): NodeRecord {
  return {
    spiffeId,
    attestationType: 'tpm',
    serialNumber: '01',
    attestationCount: 1,
    expiresAt: 1_700_003_600,
    selectors: [],
    tpm: { ekHash: 'ab', akPublic: new Uint8Array([1]) },
    createdAt: 1_700_000_000,
    ...overrides,
  };
}

/**
 * Runs `write` while another connection (another server) holds a row under the uncommitted
 * `update`, and commits that once `write` waits for the row. Resolves to what `write` resolved to,
 * or to its error.
 */
async function whileRowHeld(
  url: string,
  update: string,
  params: unknown[],
  write: () => Promise<unknown>,
): Promise<unknown> {
  const other = new pg.Client({ connectionString: url });
  await other.connect();
  try {
    await other.query('BEGIN');
    await other.query(update, params);
    let settled = false;
    const outcome = write()
      .catch((error: unknown) => error)
      .finally(() => {
        settled = true;
      });
    // Settled without waiting: it never reached the row (the test's assertions then say how).
    for (;;) {
      const waiting = await other.query('SELECT count(*)::int AS n FROM pg_locks WHERE NOT granted');
      if (waiting.rows[0].n > 0 || settled) break;
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    await other.query('COMMIT');
    return await outcome;
  } finally {
    await other.end();
  }
}

/** Runs `test` on a store over a fresh PostgreSQL database, and closes it. */
async function onFreshPostgres(test: (store: Datastore, url: string) => Promise<void>): Promise<void> {
  const { url } = await newPostgresDatabase();
  const store = (await openPostgresDatastore(url, { now: () => 1_700_000_000_000 })).datastore;
  try {
    await test(store, url);
  } finally {
    await store.close();
  }
}

/** Writes `path` until the file system holding it has no space left. */
function fillFileSystem(path: string): void {
  const fd = openSync(path, 'w', 0o600);
  const chunk = Buffer.alloc(4096, 1);
  try {
    for (;;) writeSync(fd, chunk);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOSPC') throw error;
  } finally {
    closeSync(fd);
  }
}

let postgres: TestPostgres | undefined;
let databases = 0;

/**
 * A new, empty database on the test's PostgreSQL (started on first use): its name, its URI, and the
 * URI of the server's own `postgres` database, for an administrator's connection.
 */
async function newPostgresDatabase(): Promise<{ name: string; url: string; server: string }> {
  postgres ??= await startPostgres();
  const name = `ironroot_${++databases}`;
  return { name, url: await postgres.createDatabase(name), server: postgres.connectionString };
}
afterAll(async () => {
  await postgres?.stop();
});

/** A fresh, empty datastore of each dialect: SQLite in a new directory, PostgreSQL in a new database. */
const DIALECTS: [string, (clock: Clock) => Promise<Datastore>][] = [
  [
    'SQLite',
    async (clock) =>
      (await openSqliteDatastore(join(mkdtempSync(join(tmpdir(), 'ironroot-ds-')), 'data'), clock)).datastore,
  ],
  [
    'PostgreSQL',
    async (clock) => {
      return (await openPostgresDatastore((await newPostgresDatabase()).url, clock)).datastore;
    },
  ],
];

describe('SQLite datastore files', () => {
  let dir: string;
  let store: Datastore;
  const clock: Clock = { now: () => 1_700_000_000_000 };

  beforeEach(async () => {
    dir = join(mkdtempSync(join(tmpdir(), 'ironroot-ds-')), 'data');
    store = (await openSqliteDatastore(dir, clock)).datastore;
  });
  afterEach(async () => {
    await store.close();
  });

  it('deletes an entry with its selectors and federations', async () => {
    const created = await store.createEntry(entry({ federatesWith: ['other.org'] }), 't');
    await store.deleteEntry(created.id, 't');
    const sqlite = new BetterSqlite3(join(dir, 'datastore.sqlite3'), { readonly: true });
    try {
      for (const table of ['entry_selectors', 'entry_federates_with'])
        expect(
          sqlite.prepare(`SELECT count(*) AS n FROM ${table} WHERE entry_id = ?`).get(created.id),
          table,
        ).toEqual({
          n: 0,
        });
    } finally {
      sqlite.close();
    }
  });

  it('keeps its file 0600 in a 0700 directory, in WAL mode', async () => {
    expect(statSync(dir).mode & 0o777).toBe(0o700);
    expect(statSync(join(dir, 'datastore.sqlite3')).mode & 0o777).toBe(0o600);
    await store.createEntry(entry(), 'test');
    expect(statSync(join(dir, 'datastore.sqlite3-wal')).mode & 0o777).toBe(0o600);
  });

  it('moves bans out of node records when migrating to 0004, keeping every ban', async () => {
    const legacyDir = join(mkdtempSync(join(tmpdir(), 'ironroot-ds-')), 'data');
    mkdirSync(legacyDir, { recursive: true });
    const sqlite = new BetterSqlite3(join(legacyDir, 'datastore.sqlite3'));
    const db = new Kysely<unknown>({ dialect: new SqliteDialect({ database: sqlite }) });
    const migrator = new Migrator({ db, provider: { getMigrations: async () => migrationsFor('sqlite') } });
    expect((await migrator.migrateTo('0003_continuous_attestation')).error).toBeUndefined();
    for (const [id, banned] of [
      [`${TD}/agent/tpm/banned`, 1],
      [`${TD}/agent/tpm/free`, 0],
    ] as const)
      sqlite
        .prepare(
          'INSERT INTO attested_nodes (spiffe_id, attestation_type, serial_number, expires_at, banned, ek_hash, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)',
        )
        .run(id, 'tpm', '01', 1, banned, 'e1', 1_600_000_000, 1_600_000_100);
    await db.destroy();
    const opened = await openSqliteDatastore(legacyDir, clock);
    try {
      expect(opened.migrated[0]).toBe('0004_agent_serials_and_bans');
      expect(await opened.datastore.listNodeBans()).toEqual([
        { spiffeId: `${TD}/agent/tpm/banned`, ekHash: 'e1', bannedAt: 1_600_000_100 },
      ]);
      expect((await opened.datastore.listNodes()).map((n) => [n.spiffeId, n.banned])).toEqual([
        [`${TD}/agent/tpm/banned`, true],
        [`${TD}/agent/tpm/free`, false],
      ]);
    } finally {
      await opened.datastore.close();
    }
  });

  it('on a full disk fails with SQLite’s own error, writes nothing, and works again once space is freed', async () => {
    // A file system of its own, small enough to fill: the datastore's and nothing else.
    const mountPoint = mkdtempSync(join(tmpdir(), 'ironroot-ds-full-'));
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=2m,mode=0700', 'tmpfs', mountPoint]);
    try {
      const full = (await openSqliteDatastore(join(mountPoint, 'data'), clock)).datastore;
      try {
        await full.createEntry(entry({ spiffeId: `${TD}/before` }), 'test');
        const filler = join(mountPoint, 'filler');
        fillFileSystem(filler);
        const batch = Array.from({ length: 500 }, (_, i) => entry({ spiffeId: `${TD}/full/${i}` }));
        await expect(full.createEntries(batch, 'test')).rejects.toMatchObject({
          code: 'SQLITE_FULL',
          message: 'database or disk is full',
        });
        await expect(full.createEntry(entry({ spiffeId: `${TD}/one` }), 'test')).rejects.toMatchObject({
          code: 'SQLITE_FULL',
        });
        expect(await full.countEntries({})).toBe(1);
        rmSync(filler);
        expect((await full.createEntries(batch, 'test')).filter((c) => 'entry' in c)).toHaveLength(500);
        expect(await full.countEntries({})).toBe(501);
      } finally {
        await full.close();
      }
    } finally {
      execFileSync('umount', [mountPoint]);
      rmSync(mountPoint, { recursive: true });
    }
  });

  it('migrates once and then finds the schema current', async () => {
    await store.close();
    const again = await openSqliteDatastore(dir, clock);
    store = again.datastore;
    expect(again.migrated).toEqual([]);
  });
});

describe.each(DIALECTS)('%s datastore', (_name, open) => {
  let store: Datastore;
  const clock: Clock & { t: number } = { t: 1_700_000_000_000, now: () => clock.t };

  beforeEach(async () => {
    clock.t = 1_700_000_000_000;
    store = await open(clock);
  });
  afterEach(async () => {
    await store.close();
  });

  it('creates, reads, updates and deletes an entry, bumping the revision', async () => {
    const created = await store.createEntry(
      entry({ dnsNames: ['a.example.org'], federatesWith: ['other.org'], admin: true, hint: 'h' }),
      'uid:0',
    );
    expect(created.revisionNumber).toBe(0);
    expect(created.createdAt).toBe(1_700_000_000);
    expect(await store.getEntry(created.id)).toEqual(created);
    const updated = await store.updateEntry(created.id, entry({ x509SvidTtl: 600 }), 'uid:0', 0);
    expect(updated.revisionNumber).toBe(1);
    expect((await store.getEntry(created.id))?.x509SvidTtl).toBe(600);
    await expect(store.updateEntry(created.id, entry(), 'uid:0', 0)).rejects.toMatchObject({
      code: 'ERR_ENTRY_REVISION_MISMATCH',
    });
    await store.deleteEntry(created.id, 'uid:0');
    expect(await store.getEntry(created.id)).toBeUndefined();
    await expect(store.deleteEntry(created.id, 'uid:0')).rejects.toBeInstanceOf(EntryNotFoundError);
  });

  it('refuses a duplicate whatever the selector order', async () => {
    const sel = [
      { type: 'unix', value: 'uid:1' },
      { type: 'unix', value: 'gid:2' },
    ];
    const first = await store.createEntry(entry({ selectors: sel }), 't');
    const error = await store
      .createEntry(entry({ selectors: [...sel].reverse() }), 't')
      .catch((e: unknown) => e);
    expect(error).toBeInstanceOf(EntryDuplicateError);
    expect((error as EntryDuplicateError).existingId).toBe(first.id);
    await store.createEntry(entry({ selectors: sel.slice(0, 1) }), 't');
  });

  it('creates a batch in one call, refusing stored and in-batch duplicates on their own', async () => {
    const stored = await store.createEntry(entry({ spiffeId: `${TD}/stored` }), 't');
    const batch = [
      entry({ spiffeId: `${TD}/b/0`, federatesWith: ['x.org'], dnsNames: ['b0.example.org'], hint: 'h' }),
      entry({ spiffeId: `${TD}/stored` }),
      entry({
        spiffeId: `${TD}/b/2`,
        selectors: [
          { type: 'k8s', value: 'ns:a' },
          { type: 'k8s', value: 'sa:b' },
        ],
      }),
      entry({
        spiffeId: `${TD}/b/2`,
        selectors: [
          { type: 'k8s', value: 'sa:b' },
          { type: 'k8s', value: 'ns:a' },
        ],
      }),
      ...Array.from({ length: 1100 }, (_, i) => entry({ spiffeId: `${TD}/many/${i}` })),
    ];
    const outcomes = await store.createEntries(batch, 'uid:7');
    expect(outcomes).toHaveLength(batch.length);
    const [first, duplicate, third, inBatch] = outcomes;
    expect(duplicate).toMatchObject({ error: { code: 'ERR_ENTRY_DUPLICATE', existingId: stored.id } });
    const thirdId = third !== undefined && 'entry' in third ? third.entry.id : 'missing';
    expect(inBatch).toMatchObject({ error: { code: 'ERR_ENTRY_DUPLICATE', existingId: thirdId } });
    for (const outcome of [first, third, ...outcomes.slice(4)]) {
      if (outcome === undefined || !('entry' in outcome))
        throw new Error(`not created: ${JSON.stringify(outcome)}`);
      expect(await store.getEntry(outcome.entry.id)).toEqual(outcome.entry);
    }
    expect(await store.countEntries({})).toBe(1 + 2 + 1100);
    const audit = await store.listAudit(5000);
    expect(audit.filter((a) => a.action === 'entry.create' && a.actor === 'uid:7')).toHaveLength(2 + 1100);
    expect(await store.createEntries([], 't')).toEqual([]);
  });

  it('names the entries written since an audit id, in order and once each, and no other writes', async () => {
    expect(await store.changesSince(0)).toEqual({ head: 0, entryIds: [], nodeIds: [], gap: false });
    expect(await store.settledAuditHead()).toBe(0);
    const created = await store.createEntry(entry(), 't');
    const afterCreate = await store.changesSince(0);
    expect(afterCreate).toEqual({ head: afterCreate.head, entryIds: [created.id], nodeIds: [], gap: false });
    expect(await store.settledAuditHead()).toBe(afterCreate.head);
    await store.createJoinToken({ tokenHash: 'a'.repeat(64), expiresAt: 1_800_000_000 }, 't');
    const afterToken = await store.changesSince(afterCreate.head);
    expect(afterToken.head).toBeGreaterThan(afterCreate.head);
    expect(afterToken.entryIds).toEqual([]);
    expect(afterToken.nodeIds).toEqual([]);
    const other = await store.createEntry(entry({ spiffeId: `${TD}/other` }), 't');
    await store.updateEntry(created.id, entry({ hint: 'x' }), 't');
    await store.deleteEntry(created.id, 't');
    const afterDelete = await store.changesSince(afterToken.head);
    expect(afterDelete.entryIds).toEqual([other.id, created.id]);
    expect(afterDelete.gap).toBe(false);
    expect(await store.getEntries([created.id, other.id, 'nope'])).toEqual([other]);
    // A log behind the position asked about (a store restored from a backup) is a gap.
    expect((await store.changesSince(afterDelete.head + 5)).gap).toBe(true);
  });

  it('names every node written since an audit id, but not a re-quote that changes no trust', async () => {
    const id = `${TD}/agent/tpm/ab`;
    const other = `${TD}/agent/tpm/cd`;
    let head = await store.settledAuditHead();
    /** The nodes the log names since the last call, which must not have a gap. */
    const named = async () => {
      const log = await store.changesSince(head);
      expect(log.gap).toBe(false);
      expect(log.entryIds).toEqual([]);
      head = log.head;
      return log.nodeIds;
    };
    await store.upsertNode(tpmNodeRecord(id, { serialNumber: 'a1' }), 'agent-api');
    await store.upsertNode(tpmNodeRecord(other), 'agent-api');
    expect(new Set(await named())).toEqual(new Set([id, other]));
    const renewal = { admittedSerial: 'a1', newSerialNumber: 'b2', expiresAt: 1_700_007_200 };
    expect(await store.renewNode(id, renewal, 'agent-api')).toEqual({ renewed: true });
    expect(await named()).toEqual([id]);
    expect(await store.promoteNodeSerial(id, 'b2', 'agent-api')).toBe(true);
    expect(await named()).toEqual([id]);
    // Without a change of trust only the quote state is written, which nothing keeps a copy of.
    const before = await store.getNode(id);
    const quote = { lastQuote: Buffer.from('{}'), resetCount: 7, eventLog: new Uint8Array([1]) };
    await store.recordNodeTrust(id, { trust: { state: 'trusted', changedAt: 1 }, tpm: quote }, 'reattest');
    expect(await named()).toEqual([]);
    const { tpm: quoteBefore, ...keptBefore } = before ?? {};
    const { tpm: quoteAfter, ...keptAfter } = (await store.getNode(id)) ?? {};
    expect(keptAfter).toEqual(keptBefore);
    expect(quoteAfter?.resetCount).toBe(7);
    expect(quoteBefore?.resetCount).not.toBe(7);
    const untrusted = { state: 'untrusted' as const, code: 'ERR_X', changedAt: 2 };
    await store.recordNodeTrust(id, { trust: untrusted, tpm: quote }, 'reattest');
    expect(await named()).toEqual([id]);
    await store.banNode({ spiffeId: id }, 'uid:0');
    expect(await named()).toEqual([id]);
    await store.unbanNode(id, 'uid:0');
    expect(await named()).toEqual([id]);
    await store.deleteNode(id, 'uid:0');
    expect(await named()).toEqual([id]);
    // Written again and again: named once.
    await store.banNode({ spiffeId: other }, 'uid:0');
    await store.unbanNode(other, 'uid:0');
    await store.deleteNode(other, 'uid:0');
    expect(await named()).toEqual([other]);
  });

  it('creates each identity once when identical batches run concurrently', async () => {
    const batch = [0, 1, 2].map((i) => entry({ spiffeId: `${TD}/c/${i}` }));
    const runs = await Promise.all(Array.from({ length: 4 }, () => store.createEntries(batch, 't')));
    for (let i = 0; i < batch.length; i++) {
      const outcomes = runs.map((r) => r[i]);
      const created = outcomes.filter((o) => o !== undefined && 'entry' in o);
      expect(created).toHaveLength(1);
      for (const o of outcomes.filter((x) => x !== undefined && 'error' in x))
        expect(o).toMatchObject({ error: { code: 'ERR_ENTRY_DUPLICATE' } });
    }
    expect(await store.countEntries({})).toBe(3);
  });

  it('lets exactly one of many concurrent identical creates through', async () => {
    const results = await Promise.allSettled(
      Array.from({ length: 8 }, () => store.createEntry(entry(), 't')),
    );
    expect(results.filter((r) => r.status === 'fulfilled')).toHaveLength(1);
    for (const r of results.filter((x) => x.status === 'rejected')) {
      expect(r.reason).toBeInstanceOf(EntryDuplicateError);
    }
    expect(await store.countEntries({})).toBe(1);
  });

  it('filters by selector match exact, subset, superset and any', async () => {
    const a = { type: 'k8s', value: 'ns:a' };
    const b = { type: 'k8s', value: 'sa:b' };
    const c = { type: 'k8s', value: 'pod:c' };
    const onlyA = await store.createEntry(entry({ spiffeId: `${TD}/1`, selectors: [a] }), 't');
    const ab = await store.createEntry(entry({ spiffeId: `${TD}/2`, selectors: [a, b] }), 't');
    const abc = await store.createEntry(entry({ spiffeId: `${TD}/3`, selectors: [a, b, c] }), 't');
    await store.createEntry(entry({ spiffeId: `${TD}/4`, selectors: [c] }), 't');
    const ids = async (match: 'exact' | 'subset' | 'superset' | 'any') =>
      (await store.listEntries({ selectors: { selectors: [a, b], match } })).entries.map((e) => e.id).sort();
    expect(await ids('exact')).toEqual([ab.id]);
    expect(await ids('subset')).toEqual([onlyA.id, ab.id].sort());
    expect(await ids('superset')).toEqual([ab.id, abc.id].sort());
    expect(await ids('any')).toEqual([onlyA.id, ab.id, abc.id].sort());
    expect(await store.countEntries({ selectors: { selectors: [c], match: 'exact' } })).toBe(1);
  });

  it('filters by spiffe id, parent id and federated trust domains', async () => {
    await store.createEntry(entry({ spiffeId: `${TD}/x`, federatesWith: ['a.org', 'b.org'] }), 't');
    await store.createEntry(
      entry({ spiffeId: `${TD}/y`, parentId: `${TD}/agent/b`, federatesWith: ['a.org'] }),
      't',
    );
    expect(await store.countEntries({ spiffeId: `${TD}/x` })).toBe(1);
    expect(await store.countEntries({ parentId: `${TD}/agent/b` })).toBe(1);
    expect(await store.countEntries({ federatesWith: ['a.org'] })).toBe(2);
    expect(await store.countEntries({ federatesWith: ['a.org', 'b.org'] })).toBe(1);
  });

  it('pages through entries without losing or repeating any', async () => {
    for (let i = 0; i < 25; i++) await store.createEntry(entry({ spiffeId: `${TD}/w${i}` }), 't');
    const seen: string[] = [];
    let token = '';
    let pages = 0;
    do {
      const page = await store.listEntries({}, { token, size: 10 });
      seen.push(...page.entries.map((e) => e.id));
      token = page.nextToken;
      pages++;
    } while (token !== '');
    expect(pages).toBe(3);
    expect(new Set(seen).size).toBe(25);
  });

  it('records every change in the audit log with actor and time', async () => {
    const created = await store.createEntry(entry(), 'uid:1000');
    clock.t += 5000;
    await store.deleteEntry(created.id, 'uid:0');
    const log = await store.listAudit(10);
    expect(log.map((r) => [r.action, r.actor, r.objectId, r.at])).toEqual([
      ['entry.delete', 'uid:0', created.id, 1_700_000_005],
      ['entry.create', 'uid:1000', created.id, 1_700_000_000],
    ]);
  });

  it('stores nodes with TPM data, bans and evicts them', async () => {
    await store.upsertNode(
      tpmNodeRecord(`${TD}/agent/tpm/abc`, {
        selectors: [{ type: 'tpm', value: 'ek-hash:abc' }],
        tpm: { ekHash: 'abc', akPublic: new Uint8Array([1, 2, 3]), resetCount: 4 },
      }),
      'server',
    );
    const node = await store.getNode(`${TD}/agent/tpm/abc`);
    expect(node?.tpm?.ekHash).toBe('abc');
    expect(Buffer.from(node?.tpm?.akPublic ?? [])).toEqual(Buffer.from([1, 2, 3]));
    expect(node?.tpm?.resetCount).toBe(4);
    await store.banNode({ spiffeId: `${TD}/agent/tpm/abc` }, 'uid:0');
    expect((await store.listNodes())[0]?.banned).toBe(true);
    await store.deleteNode(`${TD}/agent/tpm/abc`, 'uid:0');
    expect(await store.listNodes()).toEqual([]);
    await expect(store.deleteNode(`${TD}/agent/tpm/abc`, 'uid:0')).rejects.toBeInstanceOf(AgentNotFoundError);
  });

  it('keeps which CA key signed a node’s SVID, and nothing for a node recorded without one', async () => {
    const node = {
      attestationType: 'join_token',
      serialNumber: '02',
      attestationCount: 1,
      expiresAt: 1_700_003_600,
      selectors: [],
      createdAt: 1_700_000_000,
    };
    await store.upsertNode(
      { ...node, spiffeId: `${TD}/agent/join_token/a`, svidAuthority: 'ironroot-x509-1' },
      'server',
    );
    await store.upsertNode({ ...node, spiffeId: `${TD}/agent/join_token/b` }, 'server');
    expect((await store.getNode(`${TD}/agent/join_token/a`))?.svidAuthority).toBe('ironroot-x509-1');
    expect((await store.getNode(`${TD}/agent/join_token/b`))?.svidAuthority).toBeUndefined();
    expect((await store.listNodes()).map((n) => [n.spiffeId, n.svidAuthority])).toEqual([
      [`${TD}/agent/join_token/a`, 'ironroot-x509-1'],
      [`${TD}/agent/join_token/b`, undefined],
    ]);
  });

  it('keeps bans apart from nodes: set before attestation, kept by eviction, lifted by unban, audited', async () => {
    const id = `${TD}/agent/tpm/${'ab'.repeat(32)}`;
    const banned = await store.banNode({ spiffeId: id, ekHash: 'ab'.repeat(32) }, 'uid:0');
    expect(banned).toEqual({ spiffeId: id, ekHash: 'ab'.repeat(32), bannedAt: 1_700_000_000 });
    clock.t += 5000;
    // Banning again keeps the first ban.
    expect(await store.banNode({ spiffeId: id }, 'uid:0')).toEqual(banned);
    await store.upsertNode(
      {
        spiffeId: id,
        attestationType: 'tpm',
        serialNumber: '01',
        attestationCount: 1,
        expiresAt: 1_700_003_600,
        selectors: [],
        createdAt: 1_700_000_000,
      },
      'agent-api',
    );
    expect((await store.getNode(id))?.banned).toBe(true);
    await store.deleteNode(id, 'uid:0');
    expect(await store.getNodeBan(id)).toEqual(banned);
    expect(await store.listNodeBans()).toEqual([banned]);
    expect(await store.unbanNode(id, 'uid:0')).toEqual(banned);
    expect(await store.getNodeBan(id)).toBeUndefined();
    expect(await store.unbanNode(id, 'uid:0')).toBeUndefined();
    const audit = (await store.listAudit(10)).filter(
      (r) => r.action === 'node.ban' || r.action === 'node.unban',
    );
    expect(audit.map((r) => [r.action, r.actor, r.objectId, r.detail])).toEqual([
      ['node.unban', 'uid:0', id, { banned_at: 1_700_000_000 }],
      ['node.ban', 'uid:0', id, { already_banned: true }],
      ['node.ban', 'uid:0', id, { ek_hash: 'ab'.repeat(32), already_banned: false }],
    ]);
  });

  it("promotes a renewal's new serial to current once, and only while it is the node's new one", async () => {
    const id = `${TD}/agent/join_token/0123456789ab`;
    const node = {
      spiffeId: id,
      attestationType: 'join_token',
      serialNumber: 'a1',
      attestationCount: 1,
      expiresAt: 1_700_003_600,
      selectors: [],
      createdAt: 1_700_000_000,
    };
    await store.upsertNode({ ...node, newSerialNumber: 'b2' }, 'agent-api');
    expect(await store.getNode(id)).toMatchObject({ serialNumber: 'a1', newSerialNumber: 'b2' });
    expect(await store.promoteNodeSerial(id, 'a1', 'agent-api')).toBe(false);
    expect(await store.promoteNodeSerial(id, 'b2', 'agent-api')).toBe(true);
    const promoted = await store.getNode(id);
    expect(promoted?.serialNumber).toBe('b2');
    expect(promoted?.newSerialNumber).toBeUndefined();
    expect(await store.promoteNodeSerial(id, 'b2', 'agent-api')).toBe(false);
    expect((await store.listAudit(1))[0]).toMatchObject({
      action: 'node.serial_promote',
      objectId: id,
      detail: { serial_number: 'b2', superseded_serial_number: 'a1' },
    });
    // A full attestation records only its own certificate: a pending new serial is gone with it.
    await store.upsertNode({ ...node, serialNumber: 'c3', newSerialNumber: 'd4' }, 'agent-api');
    await store.upsertNode({ ...node, serialNumber: 'e5' }, 'agent-api');
    expect(await store.promoteNodeSerial(id, 'd4', 'agent-api')).toBe(false);
    expect((await store.getNode(id))?.serialNumber).toBe('e5');
  });

  it('records a renewal only while the node is there, trusted and on the admitted serial, changing nothing else', async () => {
    const id = `${TD}/agent/tpm/fed`;
    const attested = {
      spiffeId: id,
      attestationType: 'tpm',
      serialNumber: 'a1',
      attestationCount: 3,
      expiresAt: 1_700_003_600,
      svidAuthority: 'x509-old',
      selectors: [{ type: 'tpm', value: 'pcr:old' }],
      tpm: {
        ekHash: 'fed',
        ekIssuer: 'CN=issuer',
        akPublic: new Uint8Array([1]),
        lastQuote: new Uint8Array([2]),
        resetCount: 4,
        eventLog: new Uint8Array([3]),
      },
      createdAt: 1_699_000_000,
    };
    await store.upsertNode(attested, 'agent-api');
    const renewal = {
      admittedSerial: 'a1',
      newSerialNumber: 'b2',
      svidAuthority: 'x509-new',
      expiresAt: 1_700_007_200,
      tpm: {
        selectors: [{ type: 'tpm', value: 'pcr:new' }],
        lastQuote: new Uint8Array([5]),
        resetCount: 4,
        eventLog: new Uint8Array([3, 6]),
      },
    };
    clock.t += 1000;
    expect(await store.renewNode(id, renewal, 'agent-api')).toEqual({ renewed: true });
    const renewed = await store.getNode(id, { eventLog: true });
    expect(renewed).toMatchObject({
      serialNumber: 'a1',
      newSerialNumber: 'b2',
      svidAuthority: 'x509-new',
      expiresAt: 1_700_007_200,
      selectors: [{ type: 'tpm', value: 'pcr:new' }],
      attestationCount: 3,
      createdAt: 1_699_000_000,
      trust: { state: 'trusted' },
    });
    expect(renewed?.tpm).toMatchObject({ ekHash: 'fed', ekIssuer: 'CN=issuer', resetCount: 4 });
    expect(Buffer.from(renewed?.tpm?.lastQuote ?? [])).toEqual(Buffer.from([5]));
    expect(Buffer.from(renewed?.tpm?.eventLog ?? [])).toEqual(Buffer.from([3, 6]));
    expect((await store.listAudit(1))[0]).toMatchObject({
      action: 'node.attest',
      objectId: id,
      detail: { attestation_type: 'tpm', serial_number: 'a1', new_serial_number: 'b2', trust: 'trusted' },
    });

    // Made untrusted by a re-quote meanwhile: the verdict stands, nothing of the renewal is written.
    const untrusted = {
      state: 'untrusted' as const,
      code: 'ERR_ATTEST_EVENTLOG_REPLAY',
      changedAt: 1_700_001_500,
    };
    await store.recordNodeTrust(id, { trust: untrusted }, 'agent-api');
    const refused = await store.renewNode(id, { ...renewal, newSerialNumber: 'c3' }, 'agent-api');
    expect(refused).toMatchObject({ renewed: false, node: { trust: { state: 'untrusted' } } });
    expect(await store.getNode(id)).toMatchObject({ newSerialNumber: 'b2', trust: untrusted });

    // Attested again meanwhile (another serial): the new attestation stands.
    await store.upsertNode({ ...attested, serialNumber: 'z9' }, 'agent-api');
    expect(await store.renewNode(id, { ...renewal, newSerialNumber: 'c3' }, 'agent-api')).toMatchObject({
      renewed: false,
      node: { serialNumber: 'z9' },
    });
    expect((await store.getNode(id))?.newSerialNumber).toBeUndefined();

    // Evicted meanwhile: the node is not brought back.
    await store.deleteNode(id, 'uid:0');
    const audits = (await store.listAudit(1000)).length;
    expect(await store.renewNode(id, { ...renewal, admittedSerial: 'z9' }, 'agent-api')).toEqual({
      renewed: false,
      node: undefined,
    });
    expect(await store.getNode(id)).toBeUndefined();
    expect((await store.listAudit(1000)).length).toBe(audits);
  });

  it('records a node’s trust and last verified event log, auditing only changes of trust', async () => {
    const id = `${TD}/agent/tpm/def`;
    await store.upsertNode(
      tpmNodeRecord(id, {
        tpm: {
          ekHash: 'def',
          akPublic: new Uint8Array([1]),
          resetCount: 4,
          eventLog: new Uint8Array([9, 9]),
        },
      }),
      'server',
    );
    // Attestation makes a node trusted.
    expect((await store.getNode(id))?.trust).toEqual({ state: 'trusted', changedAt: 1_700_000_000 });
    expect(Buffer.from((await store.getNode(id, { eventLog: true }))?.tpm?.eventLog ?? [])).toEqual(
      Buffer.from([9, 9]),
    );
    // Only asked for: the hot paths (every agent API call) need no log.
    expect((await store.getNode(id))?.tpm?.eventLog).toBeUndefined();
    expect((await store.listNodes()).find((n) => n.spiffeId === id)?.tpm?.eventLog).toBeUndefined();
    const audited = async () =>
      (await store.listAudit(100)).filter(
        (r) => r.objectId === id && ['node.trusted', 'node.untrusted'].includes(r.action),
      );

    clock.t += 5000;
    const passed = await store.recordNodeTrust(
      id,
      {
        trust: { state: 'trusted', changedAt: 1_700_000_005 },
        tpm: { lastQuote: Buffer.from('{}'), resetCount: 4, eventLog: new Uint8Array([9, 9, 7]) },
      },
      'reattest',
    );
    expect(passed.changed).toBe(false);
    // An unchanged state keeps the time it changed.
    expect(passed.node.trust.changedAt).toBe(1_700_000_000);
    expect(Buffer.from((await store.getNode(id, { eventLog: true }))?.tpm?.eventLog ?? [])).toEqual(
      Buffer.from([9, 9, 7]),
    );
    expect(await audited()).toEqual([]);

    const failed = await store.recordNodeTrust(
      id,
      {
        trust: {
          state: 'untrusted',
          code: 'ERR_X',
          reason: 'why',
          details: '{"rules":[]}',
          changedAt: 1_700_000_010,
        },
      },
      'reattest',
    );
    expect(failed.changed).toBe(true);
    expect((await store.getNode(id))?.trust).toEqual({
      state: 'untrusted',
      code: 'ERR_X',
      reason: 'why',
      details: '{"rules":[]}',
      changedAt: 1_700_000_010,
    });
    // A failed re-quote leaves the last verified log alone.
    expect(Buffer.from((await store.getNode(id, { eventLog: true }))?.tpm?.eventLog ?? [])).toEqual(
      Buffer.from([9, 9, 7]),
    );
    expect(
      (
        await store.recordNodeTrust(
          id,
          { trust: { state: 'untrusted', code: 'ERR_X', reason: 'again', changedAt: 1 } },
          'reattest',
        )
      ).changed,
    ).toBe(false);
    await store.recordNodeTrust(id, { trust: { state: 'trusted', changedAt: 1_700_000_020 } }, 'reattest');
    expect((await audited()).map((r) => [r.action, r.actor, r.detail])).toEqual([
      ['node.trusted', 'reattest', { previous: 'untrusted' }],
      ['node.untrusted', 'reattest', { previous: 'trusted', code: 'ERR_X', reason: 'why' }],
    ]);
    await expect(
      store.recordNodeTrust(
        `${TD}/agent/tpm/none`,
        { trust: { state: 'trusted', changedAt: 1 } },
        'reattest',
      ),
    ).rejects.toBeInstanceOf(AgentNotFoundError);
  });

  it('records a verdict only onto the attestation it was made on: not after the node attested again', async () => {
    const id = `${TD}/agent/tpm/again`;
    const first = tpmNodeRecord(id, {
      tpm: { ekHash: 'ab', akPublic: new Uint8Array([1]), resetCount: 4, eventLog: new Uint8Array([1]) },
    });
    await store.upsertNode(first, 'agent-api');
    const judged = (await store.getNode(id)) as AttestedNode;
    const verdict = {
      trust: { state: 'untrusted', code: 'ERR_REATTEST_NO_ANSWER', reason: 'silent', changedAt: 1 },
      tpm: { lastQuote: Buffer.from('{"old":true}'), resetCount: 4, eventLog: new Uint8Array([1, 2]) },
      judged,
    } as const;
    // Attested again with a new AK and log while the verdict was being made.
    const second = tpmNodeRecord(id, {
      serialNumber: '02',
      attestationCount: 2,
      tpm: { ekHash: 'ab', akPublic: new Uint8Array([2]), resetCount: 4, eventLog: new Uint8Array([7]) },
    });
    await store.upsertNode(second, 'agent-api');
    const audits = (await store.listAudit(1000)).length;
    const refused = store.recordNodeTrust(id, verdict, 'reattest');
    await expect(refused).rejects.toBeInstanceOf(NodeAttestedAgainError);
    await expect(refused).rejects.toMatchObject({
      code: 'ERR_AGENT_ATTESTED_AGAIN',
      message: expect.stringContaining(
        'the verdict was on attestation 1 of the record created 2023-11-14T22:13:20.000Z; the node now holds attestation 2 of the record created 2023-11-14T22:13:20.000Z',
      ),
    });
    const stands = await store.getNode(id, { eventLog: true });
    expect(stands?.trust.state).toBe('trusted');
    expect(Buffer.from(stands?.tpm?.akPublic ?? [])).toEqual(Buffer.from([2]));
    expect(Buffer.from(stands?.tpm?.eventLog ?? [])).toEqual(Buffer.from([7]));
    expect(stands?.tpm?.lastQuote).toBeUndefined();
    expect((await store.listAudit(1000)).length).toBe(audits);

    // Evicted and attested afresh: the count starts over at 1, the record's creation time differs.
    await store.deleteNode(id, 'uid:0');
    await store.upsertNode({ ...second, attestationCount: 1, createdAt: 1_700_000_900 }, 'agent-api');
    await expect(store.recordNodeTrust(id, verdict, 'reattest')).rejects.toMatchObject({
      code: 'ERR_AGENT_ATTESTED_AGAIN',
    });
    expect((await store.getNode(id))?.trust.state).toBe('trusted');

    // On the attestation it was made on, the verdict is recorded.
    const current = (await store.getNode(id)) as AttestedNode;
    expect((await store.recordNodeTrust(id, { ...verdict, judged: current }, 'reattest')).changed).toBe(true);
    expect((await store.getNode(id))?.trust).toMatchObject({
      state: 'untrusted',
      code: 'ERR_REATTEST_NO_ANSWER',
    });
  });

  it('consumes a join token once, and not after it expired', async () => {
    await store.createJoinToken(
      { tokenHash: 'h1', spiffeId: `${TD}/node`, expiresAt: 1_700_000_600 },
      'uid:0',
    );
    await store.createJoinToken({ tokenHash: 'h2', expiresAt: 1_700_000_600 }, 'uid:0');
    expect(await store.consumeJoinToken('h1', 1_700_000_100, 'server')).toEqual({
      tokenHash: 'h1',
      spiffeId: `${TD}/node`,
      expiresAt: 1_700_000_600,
    });
    expect(await store.consumeJoinToken('h1', 1_700_000_100, 'server')).toBeUndefined();
    expect(await store.consumeJoinToken('h2', 1_700_000_600, 'server')).toBeUndefined();
  });

  it('consumes an attestation nonce once: then a replay, late ones expired, strangers unknown', async () => {
    const T = 1_700_000_000_000;
    await store.issueNonce({ nonceHash: 'n1', secretHash: 's1', expiresAt: T + 60_000 });
    await store.issueNonce({ nonceHash: 'n2', expiresAt: T + 60_000 });
    await store.issueNonce({ nonceHash: 'n3', expiresAt: T + 60_000 });
    expect(await store.nonceConsumed('n1')).toBe(false);
    expect(await store.consumeNonce('n1', T + 1_000)).toEqual({ outcome: 'fresh', secretHash: 's1' });
    expect(await store.nonceConsumed('n1')).toBe(true);
    expect(await store.consumeNonce('n1', T + 2_000)).toEqual({ outcome: 'replayed' });
    expect(await store.consumeNonce('n2', T + 60_000)).toEqual({ outcome: 'fresh' });
    expect(await store.consumeNonce('n3', T + 60_001)).toEqual({ outcome: 'expired' });
    // An expired nonce is consumed all the same: answering it again is a replay.
    expect(await store.consumeNonce('n3', T + 60_002)).toEqual({ outcome: 'replayed' });
    expect(await store.consumeNonce('never-issued', T)).toEqual({ outcome: 'unknown' });
    expect(await store.nonceConsumed('never-issued')).toBe(false);
  });

  it('lets exactly one of many concurrent consumes of a nonce through', async () => {
    const T = 1_700_000_000_000;
    await store.issueNonce({ nonceHash: 'race', expiresAt: T + 60_000 });
    const outcomes = await Promise.all(
      Array.from({ length: 20 }, () => store.consumeNonce('race', T + 1_000)),
    );
    expect(outcomes.filter((o) => o.outcome === 'fresh')).toHaveLength(1);
    expect(outcomes.filter((o) => o.outcome === 'replayed')).toHaveLength(19);
  });

  it('prunes nonces expired before a time, in batches of at most the limit, oldest first', async () => {
    const T = 1_700_000_000_000;
    for (let i = 0; i < 5; i++) await store.issueNonce({ nonceHash: `old${i}`, expiresAt: T + i });
    await store.issueNonce({ nonceHash: 'young', expiresAt: T + 100 });
    await store.consumeNonce('old0', T);
    expect(await store.pruneNonces(T + 100, 3)).toBe(3);
    expect(await store.consumeNonce('old3', T + 200)).toEqual({ outcome: 'expired' });
    expect(await store.pruneNonces(T + 100, 3)).toBe(2);
    expect(await store.pruneNonces(T + 100, 3)).toBe(0);
    for (const gone of ['old0', 'old1', 'old2', 'old3', 'old4'])
      expect(await store.consumeNonce(gone, T)).toEqual({ outcome: 'unknown' });
    expect(await store.consumeNonce('young', T + 50)).toEqual({ outcome: 'fresh' });
  });
});

describe('PostgreSQL shared by two servers', () => {
  it('waits for the migration advisory lock another server holds before it migrates', async () => {
    const { url } = await newPostgresDatabase();
    const holder = new pg.Client({ connectionString: url });
    await holder.connect();
    await holder.query('SELECT pg_advisory_lock($1::bigint)', [MIGRATION_LOCK_KEY]);
    let settled = false;
    const opening = openPostgresDatastore(url, { now: () => 1_700_000_000_000 }).finally(() => {
      settled = true;
    });
    try {
      // Until another session queues for the same advisory lock, the open has not got past it.
      for (;;) {
        const waiting = await holder.query(
          "SELECT count(*)::int AS n FROM pg_locks WHERE locktype = 'advisory' AND NOT granted",
        );
        if (waiting.rows[0].n === 1 || settled) break;
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
      const tables = await holder.query("SELECT to_regclass('registration_entries') IS NULL AS absent");
      expect(tables.rows[0].absent).toBe(true);
      expect(settled).toBe(false);
    } finally {
      await holder.query('SELECT pg_advisory_unlock($1::bigint)', [MIGRATION_LOCK_KEY]);
      await holder.end();
    }
    const opened = await opening;
    expect(opened.migrated).toEqual(Object.keys(migrationsFor('postgres')).sort());
    await opened.datastore.close();
  });

  it('survives its connections ending under a query (a database restart): the query fails, the next opens a new one', async () => {
    const { name, url, server } = await newPostgresDatabase();
    const admin = new pg.Client({ connectionString: server });
    await admin.connect();
    const broken: string[] = [];
    const opened = await openPostgresDatastore(
      url,
      { now: () => 1_700_000_000_000 },
      { onConnectionError: (error) => broken.push(error.message) },
    );
    try {
      // A batch long enough to be caught in flight; its connections are ended under it.
      const batch = Array.from({ length: 20_000 }, (_, i) => entry({ spiffeId: `${TD}/cut/${i}` }));
      // Its outcome taken at once: it may fail before the termination query below answers.
      const creating = opened.datastore.createEntries(batch, 't').then(
        () => 'created',
        (error: unknown) => error,
      );
      for (;;) {
        const active = await admin.query(
          "SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = $1 AND state <> 'idle'",
          [name],
        );
        if (active.rows[0].n > 0) break;
        await new Promise((resolve) => setTimeout(resolve, 5));
      }
      await admin.query('SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1', [name]);
      expect(await creating).toBeInstanceOf(Error);
      expect(broken.length).toBeGreaterThan(0);
      // Nothing of the batch was stored, and the store answers again on a new connection.
      expect(await opened.datastore.countEntries({})).toBe(0);
      expect(
        (await opened.datastore.createEntries([entry({ spiffeId: `${TD}/after` })], 't'))[0],
      ).toHaveProperty('entry');
    } finally {
      await opened.datastore.close();
      await admin.end();
    }
  });

  it('migrates with a pool of one connection: the lock has a connection of its own', async () => {
    const { url } = await newPostgresDatabase();
    const opened = await openPostgresDatastore(url, { now: () => 1_700_000_000_000 }, { maxConnections: 1 });
    try {
      expect(opened.migrated).toEqual(Object.keys(migrationsFor('postgres')).sort());
      await opened.datastore.ping();
    } finally {
      await opened.datastore.close();
    }
  });

  it('migrates a fresh database once when four servers open it at the same moment', async () => {
    const { url } = await newPostgresDatabase();
    const clock: Clock = { now: () => 1_700_000_000_000 };
    const opened = await Promise.all([1, 2, 3, 4].map(() => openPostgresDatastore(url, clock)));
    try {
      const all = Object.keys(migrationsFor('postgres')).sort();
      // Exactly one open ran the migrations; the others found the schema current.
      expect(opened.map((o) => o.migrated.length).sort()).toEqual([0, 0, 0, all.length]);
      expect(opened.flatMap((o) => o.migrated)).toEqual(all);
      const check = new pg.Client({ connectionString: url });
      await check.connect();
      const applied = await check.query('SELECT name FROM kysely_migration ORDER BY name');
      await check.end();
      expect(applied.rows.map((r: { name: string }) => r.name)).toEqual(all);
      await opened[0]?.datastore.ping();
    } finally {
      for (const o of opened) await o.datastore.close();
    }
  });

  it('does not record a re-quote verdict onto a node another server attested again while the verdict was written', () =>
    onFreshPostgres(async (store, url) => {
      const id = `${TD}/agent/tpm/raced`;
      await store.upsertNode(tpmNodeRecord(id), 'agent-api');
      const judged = (await store.getNode(id)) as AttestedNode;
      const outcome = await whileRowHeld(
        url,
        'UPDATE attested_nodes SET attestation_count = attestation_count + 1, ak_public = $2 WHERE spiffe_id = $1',
        [id, Buffer.from([2])],
        () =>
          store.recordNodeTrust(
            id,
            { trust: { state: 'untrusted', code: 'ERR_X', reason: 'old AK', changedAt: 1 }, judged },
            'reattest',
          ),
      );
      expect(outcome).toMatchObject({ code: 'ERR_AGENT_ATTESTED_AGAIN' });
      expect(await store.getNode(id)).toMatchObject({ attestationCount: 2, trust: { state: 'trusted' } });
      expect((await store.listAudit(100)).map((r) => r.action)).not.toContain('node.untrusted');
    }));

  it('does not promote a renewal’s serial over an attestation another server committed meanwhile', () =>
    onFreshPostgres(async (store, url) => {
      const id = `${TD}/agent/tpm/promoted`;
      await store.upsertNode(tpmNodeRecord(id, { serialNumber: 'a1', newSerialNumber: 'b2' }), 'agent-api');
      // The renewed SVID's first use races a fresh attestation, which replaces both serials.
      const outcome = await whileRowHeld(
        url,
        "UPDATE attested_nodes SET serial_number = 'f1', new_serial_number = NULL, attestation_count = 2 WHERE spiffe_id = $1",
        [id],
        () => store.promoteNodeSerial(id, 'b2', 'agent-api'),
      );
      expect(outcome).toBe(false);
      expect(await store.getNode(id)).toMatchObject({ serialNumber: 'f1', attestationCount: 2 });
      expect((await store.getNode(id))?.newSerialNumber).toBeUndefined();
      expect((await store.listAudit(100)).map((r) => r.action)).not.toContain('node.serial_promote');
    }));

  it('lets one of two servers use a join token: the one presenting it second, as the first commits, is refused', () =>
    onFreshPostgres(async (store, url) => {
      await store.createJoinToken({ tokenHash: 'once', expiresAt: 1_700_000_600 }, 'uid:0');
      // Another server's agent is consuming the token, uncommitted, when this one presents it.
      const outcome = await whileRowHeld(url, 'DELETE FROM join_tokens WHERE token_hash = $1', ['once'], () =>
        store.consumeJoinToken('once', 1_700_000_100, 'agent-api'),
      );
      expect(outcome).toBeUndefined();
      expect((await store.listAudit(100)).map((r) => r.action)).not.toContain('join_token.use');
    }));

  it('does not overwrite an entry update another server committed after this one read the entry', () =>
    onFreshPostgres(async (store, url) => {
      const created = await store.createEntry(entry(), 't');
      // Both servers read revision 0; the other one's update holds the row when this one writes.
      const outcome = await whileRowHeld(
        url,
        "UPDATE registration_entries SET hint = 'other', revision_number = 1 WHERE id = $1",
        [created.id],
        () => store.updateEntry(created.id, entry({ hint: 'mine' }), 't', 0),
      );
      expect(outcome).toMatchObject({
        code: 'ERR_ENTRY_REVISION_MISMATCH',
        message: `entry ${created.id} is at revision 1, not 0: it changed since you read it; read it again and retry`,
      });
      expect(await store.getEntry(created.id)).toMatchObject({ hint: 'other', revisionNumber: 1 });
      expect((await store.listAudit(100)).map((r) => r.action)).not.toContain('entry.update');
    }));

  it('deletes an entry at the revision another server committed meanwhile, and audits that one', () =>
    onFreshPostgres(async (store, url) => {
      const created = await store.createEntry(entry({ federatesWith: ['other.org'] }), 't');
      const outcome = await whileRowHeld(
        url,
        "UPDATE registration_entries SET hint = 'other', revision_number = 1 WHERE id = $1",
        [created.id],
        () => store.deleteEntry(created.id, 't'),
      );
      expect(outcome).toMatchObject({ id: created.id, hint: 'other', revisionNumber: 1 });
      expect(await store.getEntry(created.id)).toBeUndefined();
      const deletes = (await store.listAudit(100)).filter((r) => r.action === 'entry.delete');
      expect(deletes.map((r) => r.detail)).toEqual([expect.objectContaining({ revision_number: 1 })]);
      const db = new pg.Client({ connectionString: url });
      await db.connect();
      try {
        for (const table of ['entry_selectors', 'entry_federates_with'])
          expect((await db.query(`SELECT count(*)::int AS n FROM ${table}`)).rows, table).toEqual([{ n: 0 }]);
      } finally {
        await db.end();
      }
    }));

  it('lets one of two servers delete an entry: the second is not found, and the deletion is audited once', () =>
    onFreshPostgres(async (store, url) => {
      const created = await store.createEntry(entry(), 't');
      const outcome = await whileRowHeld(
        url,
        'DELETE FROM registration_entries WHERE id = $1',
        [created.id],
        () => store.deleteEntry(created.id, 't'),
      );
      expect(outcome).toBeInstanceOf(EntryNotFoundError);
      expect((await store.listAudit(100)).map((r) => r.action)).not.toContain('entry.delete');
    }));

  /**
   * Deletes the federated bundle of other.org (`mode`) while another server holds the row of an
   * entry federating with it under the uncommitted `write` ($1: the entry's id); the entry.
   */
  async function bundleDeletedWhileRowHeld(
    store: Datastore,
    url: string,
    write: string,
    mode: 'dissociate' | 'delete',
  ): Promise<RegistrationEntry> {
    await store.setFederatedBundle('other.org', '{"keys":[]}', 't');
    const created = await store.createEntry(entry({ federatesWith: ['other.org'] }), 't');
    const outcome = await whileRowHeld(url, write, [created.id], () =>
      store.deleteFederatedBundle('other.org', 't', mode),
    );
    expect(outcome).toBeUndefined();
    return created;
  }

  /** What the audit log says a bundle deletion did to entries: actions with their revision read. */
  async function bundleDeleteAudit(store: Datastore) {
    return (await store.listAudit(100))
      .filter((r) => ['entry.update', 'entry.delete', 'bundle.delete'].includes(r.action))
      .map((r) => ({ action: r.action, detail: r.detail }))
      .reverse();
  }

  it('dissociates an entry from a deleted bundle at the revision another server committed meanwhile, keeping that update', () =>
    onFreshPostgres(async (store, url) => {
      const created = await bundleDeletedWhileRowHeld(
        store,
        url,
        "UPDATE registration_entries SET hint = 'other', revision_number = 1 WHERE id = $1",
        'dissociate',
      );
      expect(await store.getEntry(created.id)).toMatchObject({
        hint: 'other',
        federatesWith: [],
        revisionNumber: 2,
      });
      expect(await bundleDeleteAudit(store)).toEqual([
        {
          action: 'entry.update',
          detail: expect.objectContaining({
            before: expect.objectContaining({ revision_number: 1 }),
            after: expect.objectContaining({ revision_number: 2 }),
          }),
        },
        { action: 'bundle.delete', detail: { mode: 'dissociate', entries: 1 } },
      ]);
    }));

  it('deletes an entry with its bundle at the revision another server committed meanwhile, and audits that one', () =>
    onFreshPostgres(async (store, url) => {
      const created = await bundleDeletedWhileRowHeld(
        store,
        url,
        "UPDATE registration_entries SET hint = 'other', revision_number = 1 WHERE id = $1",
        'delete',
      );
      expect(await store.getEntry(created.id)).toBeUndefined();
      expect(await bundleDeleteAudit(store)).toEqual([
        { action: 'entry.delete', detail: expect.objectContaining({ revision_number: 1 }) },
        { action: 'bundle.delete', detail: { mode: 'delete', entries: 1 } },
      ]);
    }));

  it('leaves alone an entry another server took out of the trust domain meanwhile', () =>
    onFreshPostgres(async (store, url) => {
      const created = await bundleDeletedWhileRowHeld(
        store,
        url,
        'WITH dropped AS (DELETE FROM entry_federates_with WHERE entry_id = $1) UPDATE registration_entries SET revision_number = 1 WHERE id = $1',
        'dissociate',
      );
      expect(await store.getEntry(created.id)).toMatchObject({ federatesWith: [], revisionNumber: 1 });
      expect(await bundleDeleteAudit(store)).toEqual([
        { action: 'bundle.delete', detail: { mode: 'dissociate', entries: 0 } },
      ]);
    }));

  it('leaves alone an entry another server deleted while its bundle was deleted, and counts only what changed', () =>
    onFreshPostgres(async (store, url) => {
      const created = await bundleDeletedWhileRowHeld(
        store,
        url,
        'DELETE FROM registration_entries WHERE id = $1',
        'dissociate',
      );
      expect(await store.getEntry(created.id)).toBeUndefined();
      expect(await bundleDeleteAudit(store)).toEqual([
        { action: 'bundle.delete', detail: { mode: 'dissociate', entries: 0 } },
      ]);
    }));

  it('lets one of two servers consume a nonce the other issued; the loser, and any later answer, is a replay', async () => {
    const { url } = await newPostgresDatabase();
    const T = 1_700_000_000_000;
    const clock: Clock = { now: () => T };
    const one = (await openPostgresDatastore(url, clock)).datastore;
    const two = (await openPostgresDatastore(url, clock)).datastore;
    try {
      await one.issueNonce({ nonceHash: 'shared', secretHash: 's', expiresAt: T + 60_000 });
      const outcomes = await Promise.all([one.consumeNonce('shared', T), two.consumeNonce('shared', T)]);
      expect(outcomes.map((o) => o.outcome).sort()).toEqual(['fresh', 'replayed']);
      expect(await two.consumeNonce('shared', T + 1)).toEqual({ outcome: 'replayed' });
      expect(await one.nonceConsumed('shared')).toBe(true);
    } finally {
      await one.close();
      await two.close();
    }
  });
});

describe('PostgreSQL: the CA lease and journal version between servers', () => {
  const T = 1_700_000_000_000;
  const clock: Clock = { now: () => T };
  let one: Datastore;
  let two: Datastore;

  beforeEach(async () => {
    const { url } = await newPostgresDatabase();
    one = (await openPostgresDatastore(url, clock)).datastore;
    two = (await openPostgresDatastore(url, clock)).datastore;
  });
  afterEach(async () => {
    await one.close();
    await two.close();
  });

  it('gives a free or expired lease to exactly one of many servers trying at once, round after round', async () => {
    for (let round = 0; round < 30; round++) {
      const now = T + round * 10_000;
      // Each round the previous holder's lease has run out (or it was released, every third round).
      const tries = Array.from({ length: 8 }, (_, i) =>
        (i % 2 === 0 ? one : two).acquireLease('ca-rotation', `server-${i}`, now, 5_000),
      );
      const leases = await Promise.all(tries);
      const holders = new Set(leases.map((l) => l.holder));
      expect(holders.size).toBe(1);
      const [holder] = holders;
      expect(leases.filter((l, i) => l.holder === `server-${i}`)).toHaveLength(1);
      if (round % 3 === 0 && holder !== undefined) await one.releaseLease('ca-rotation', holder);
    }
  });

  it('writes exactly one of two CA changes decided on the same version', async () => {
    const slot = (keyId: string) => ({
      authority: 'x509' as const,
      slot: 'A' as const,
      keyId,
      state: 'active' as const,
      publicKeyDer: new Uint8Array([1]),
      notBefore: 1,
      notAfter: 2,
      tainted: false,
    });
    for (let round = 0; round < 20; round++) {
      const version = await one.caJournalVersion();
      const outcomes = await Promise.allSettled([
        one.recordCaChange({ upsert: [slot(`one-${round}`)], remove: [] }, 'ca.x509.init', 'one', version),
        two.recordCaChange({ upsert: [slot(`two-${round}`)], remove: [] }, 'ca.x509.init', 'two', version),
      ]);
      expect(outcomes.filter((o) => o.status === 'fulfilled').map((o) => o.value)).toEqual([version + 1]);
      expect(outcomes.filter((o) => o.status === 'rejected').map((o) => o.reason.code)).toEqual([
        'ERR_CA_JOURNAL_CONFLICT',
      ]);
      expect(await two.listCaSlots()).toHaveLength(round + 1);
    }
  });
});

describe.each(DIALECTS)('%s datastore: CA journal and bundles', (_name, open) => {
  let store: Datastore;
  const clock: Clock = { now: () => 1_700_000_000_000 };

  beforeEach(async () => {
    store = await open(clock);
  });
  afterEach(async () => {
    await store.close();
  });

  const slot = (s: 'A' | 'B', state: 'prepared' | 'active' | 'old') => ({
    authority: 'x509' as const,
    slot: s,
    keyId: `x509-${s}`,
    state,
    publicKeyDer: new Uint8Array([s === 'A' ? 1 : 2]),
    certificateDer: new Uint8Array([9]),
    notBefore: s === 'A' ? 1 : 2,
    notAfter: 3,
    tainted: false,
  });

  it('journals slots and the own bundle together, replacing a slot in place', async () => {
    await store.recordCaChange(
      {
        upsert: [slot('A', 'active')],
        remove: [],
        bundle: { trustDomain: 'example.org', document: '{"keys":[]}', sequence: 1 },
      },
      'ca.init',
      'server',
    );
    await store.recordCaChange(
      {
        upsert: [slot('A', 'old'), slot('B', 'active')],
        remove: [],
        bundle: { trustDomain: 'example.org', document: '{"keys":[1]}', sequence: 2 },
      },
      'ca.activate',
      'server',
    );
    const slots = await store.listCaSlots();
    expect(slots.map((s) => [s.slot, s.state])).toEqual([
      ['A', 'old'],
      ['B', 'active'],
    ]);
    expect(Buffer.from(slots[1]?.publicKeyDer ?? [])).toEqual(Buffer.from([2]));
    expect(await store.getBundle('example.org')).toMatchObject({
      document: '{"keys":[1]}',
      sequence: 2,
      federated: false,
    });
    expect((await store.listAudit(1))[0]).toMatchObject({ action: 'ca.activate', objectId: 'x509-A,x509-B' });
    await store.recordCaChange(
      { upsert: [], remove: [{ authority: 'x509', keyId: 'x509-A' }] },
      'ca.prune',
      'server',
    );
    expect((await store.listCaSlots()).map((s) => s.keyId)).toEqual(['x509-B']);
  });

  it('keeps federated bundles with a growing sequence, and deletes them', async () => {
    expect((await store.setFederatedBundle('partner.org', '{"keys":[]}', 'uid:0')).sequence).toBe(1);
    expect((await store.setFederatedBundle('partner.org', '{"keys":[2]}', 'uid:0')).sequence).toBe(2);
    expect((await store.listBundles()).map((b) => [b.trustDomain, b.federated])).toEqual([
      ['partner.org', true],
    ]);
    await store.deleteFederatedBundle('partner.org', 'uid:0');
    await expect(store.deleteFederatedBundle('partner.org', 'uid:0')).rejects.toMatchObject({
      code: 'ERR_BUNDLE_NOT_FOUND',
    });
  });

  it("keeps a fetched bundle's endpoint sequence (any uint64), and forgets it when an operator sets the bundle", async () => {
    const top = 2n ** 64n - 1n;
    const fetched = await store.setFederatedBundle('partner.org', '{"keys":[1]}', 'federation', top);
    expect(fetched.endpointSequence).toBe(top);
    expect((await store.getBundle('partner.org'))?.endpointSequence).toBe(top);
    expect((await store.listBundles()).find((b) => b.trustDomain === 'partner.org')?.endpointSequence).toBe(
      top,
    );
    // A fetch older than the stored one (another server stored it meanwhile) is refused, nothing written.
    const audits = (await store.listAudit(1000)).length;
    await expect(
      store.setFederatedBundle('partner.org', '{"keys":[0]}', 'federation', top - 1n),
    ).rejects.toMatchObject({
      code: 'ERR_BUNDLE_SEQUENCE_STALE',
      stored: top,
      offered: top - 1n,
      message: `the bundle of partner.org stored meanwhile has spiffe_sequence ${top}, newer than the ${top - 1n} offered; the stored one stays`,
    });
    expect(await store.getBundle('partner.org')).toMatchObject({ document: '{"keys":[1]}', sequence: 1 });
    expect((await store.listAudit(1000)).length).toBe(audits);
    // The same sequence is not older.
    expect((await store.setFederatedBundle('partner.org', '{"keys":[1]}', 'federation', top)).sequence).toBe(
      2,
    );
    await store.setFederatedBundle('partner.org', '{"keys":[2]}', 'uid:0');
    const overridden = await store.getBundle('partner.org');
    expect(overridden).toMatchObject({ document: '{"keys":[2]}', sequence: 3 });
    expect(overridden).not.toHaveProperty('endpointSequence');
    // After an operator's bundle, any fetched sequence is stored.
    expect(
      (await store.setFederatedBundle('partner.org', '{"keys":[3]}', 'federation', 1n)).endpointSequence,
    ).toBe(1n);
  });

  it('refuses to delete a federated bundle entries federate with, and keeps it', async () => {
    await store.setFederatedBundle('partner.org', '{"keys":[]}', 'uid:0');
    const first = await store.createEntry(
      entry({ spiffeId: `${TD}/a`, federatesWith: ['partner.org'] }),
      't',
    );
    const second = await store.createEntry(
      entry({ spiffeId: `${TD}/b`, federatesWith: ['partner.org'] }),
      't',
    );
    await expect(store.deleteFederatedBundle('partner.org', 'uid:0')).rejects.toMatchObject({
      code: 'ERR_BUNDLE_IN_USE',
      message: expect.stringMatching(
        /^2 registration entries federate with partner\.org: .*entry show --federates-with partner\.org/,
      ),
    });
    expect(await store.getBundle('partner.org')).toMatchObject({ federated: true, sequence: 1 });
    expect((await store.listAudit(1000)).map((a) => a.action)).not.toContain('bundle.delete');
    await store.deleteEntry(first.id, 't');
    await expect(store.deleteFederatedBundle('partner.org', 'uid:0')).rejects.toMatchObject({
      message: expect.stringMatching(/^1 registration entry federates with partner\.org/),
    });
    await store.deleteEntry(second.id, 't');
    await store.deleteFederatedBundle('partner.org', 'uid:0');
    expect(await store.getBundle('partner.org')).toBeUndefined();
  });

  it('deleting a federated bundle in dissociate mode takes its trust domain out of the entries, each audited', async () => {
    await store.setFederatedBundle('partner.org', '{"keys":[]}', 'uid:0');
    const both = await store.createEntry(
      entry({ spiffeId: `${TD}/both`, federatesWith: ['other.org', 'partner.org'] }),
      't',
    );
    const only = await store.createEntry(
      entry({ spiffeId: `${TD}/only`, federatesWith: ['partner.org'] }),
      't',
    );
    const apart = await store.createEntry(
      entry({ spiffeId: `${TD}/apart`, federatesWith: ['other.org'] }),
      't',
    );
    const before = (await store.changesSince(0)).head;
    await store.deleteFederatedBundle('partner.org', 'uid:0', 'dissociate');
    expect(await store.getBundle('partner.org')).toBeUndefined();
    expect(await store.getEntry(both.id)).toMatchObject({ federatesWith: ['other.org'], revisionNumber: 1 });
    expect(await store.getEntry(only.id)).toMatchObject({ federatesWith: [], revisionNumber: 1 });
    expect(await store.getEntry(apart.id)).toEqual(apart);
    expect((await store.listEntries({ federatesWith: ['partner.org'] })).entries).toEqual([]);
    // The entry journal hears of both, as of any update.
    expect(new Set((await store.changesSince(before)).entryIds)).toEqual(new Set([both.id, only.id]));
    const audit = await store.listAudit(3);
    expect(audit.map((a) => [a.action, a.objectId])).toEqual(
      expect.arrayContaining([
        ['bundle.delete', 'partner.org'],
        ['entry.update', both.id],
        ['entry.update', only.id],
      ]),
    );
    expect(audit.find((a) => a.action === 'bundle.delete')?.detail).toEqual({
      mode: 'dissociate',
      entries: 2,
    });
  });

  it('deleting a federated bundle in delete mode deletes the entries federating with it, each audited', async () => {
    await store.setFederatedBundle('partner.org', '{"keys":[]}', 'uid:0');
    const federating = await store.createEntry(
      entry({ spiffeId: `${TD}/fed`, federatesWith: ['partner.org'] }),
      't',
    );
    const apart = await store.createEntry(entry({ spiffeId: `${TD}/apart` }), 't');
    await store.deleteFederatedBundle('partner.org', 'uid:0', 'delete');
    expect(await store.getEntry(federating.id)).toBeUndefined();
    expect(await store.getEntry(apart.id)).toEqual(apart);
    expect((await store.listAudit(2)).map((a) => [a.action, a.objectId])).toEqual(
      expect.arrayContaining([
        ['bundle.delete', 'partner.org'],
        ['entry.delete', federating.id],
      ]),
    );
  });

  it('raises the journal version with every CA change, and refuses one decided on an older version, writing nothing', async () => {
    expect(await store.caJournalVersion()).toBe(0);
    const bundle = { trustDomain: 'example.org', document: '{"keys":[]}', sequence: 1 };
    expect(
      await store.recordCaChange(
        { upsert: [slot('A', 'active')], remove: [], bundle },
        'ca.init',
        'server',
        0,
      ),
    ).toBe(1);
    // Without an expected version (the single-server callers before), the change is written anyway.
    expect(
      await store.recordCaChange({ upsert: [slot('B', 'prepared')], remove: [] }, 'ca.prepare', 'a'),
    ).toBe(2);
    const audited = (await store.listAudit(100)).length;
    await expect(
      store.recordCaChange(
        {
          upsert: [slot('A', 'old'), slot('B', 'active')],
          remove: [],
          bundle: { ...bundle, document: '{"keys":[1]}', sequence: 2 },
        },
        'ca.activate',
        'b',
        1,
      ),
    ).rejects.toMatchObject({
      code: 'ERR_CA_JOURNAL_CONFLICT',
      message: /version 2, this server had read 1/,
    });
    expect(await store.caJournalVersion()).toBe(2);
    expect((await store.listCaSlots()).map((s) => [s.slot, s.state])).toEqual([
      ['A', 'active'],
      ['B', 'prepared'],
    ]);
    expect(await store.getBundle('example.org')).toMatchObject({ sequence: 1 });
    expect((await store.listAudit(100)).length).toBe(audited);
  });

  it('leases to one holder at a time: renewed by it, refused to others until it ends or is released', async () => {
    const T = 1_700_000_000_000;
    expect(await store.acquireLease('ca-rotation', 'a', T, 1000)).toEqual({
      name: 'ca-rotation',
      holder: 'a',
      expiresAtMs: T + 1000,
    });
    expect(await store.acquireLease('ca-rotation', 'b', T + 999, 1000)).toMatchObject({
      holder: 'a',
      expiresAtMs: T + 1000,
    });
    // Renewal by the holder extends it; another name is another lease.
    expect(await store.acquireLease('ca-rotation', 'a', T + 500, 1000)).toMatchObject({
      holder: 'a',
      expiresAtMs: T + 1500,
    });
    expect(await store.acquireLease('other', 'b', T, 1000)).toMatchObject({ holder: 'b' });
    expect(await store.acquireLease('ca-rotation', 'b', T + 1499, 1000)).toMatchObject({ holder: 'a' });
    expect(await store.acquireLease('ca-rotation', 'b', T + 1500, 1000)).toMatchObject({
      holder: 'b',
      expiresAtMs: T + 2500,
    });
    // Only the holder's release frees it.
    await store.releaseLease('ca-rotation', 'a');
    expect(await store.acquireLease('ca-rotation', 'a', T + 1600, 1000)).toMatchObject({ holder: 'b' });
    await store.releaseLease('ca-rotation', 'b');
    expect(await store.acquireLease('ca-rotation', 'a', T + 1600, 1000)).toMatchObject({ holder: 'a' });
  });

  it('creates, updates and deletes federation relationships, each audited, keeping the bundle on delete', async () => {
    const web = {
      trustDomain: 'partner.org',
      bundleEndpointUrl: 'https://partner.org/bundle',
      profile: 'https_web' as const,
    };
    expect(await store.createFederationRelationship(web, 'uid:0')).toEqual({
      ...web,
      createdAt: 1_700_000_000,
      updatedAt: 1_700_000_000,
    });
    await expect(store.createFederationRelationship(web, 'uid:0')).rejects.toMatchObject({
      code: 'ERR_FEDERATION_EXISTS',
    });
    const spiffe = {
      trustDomain: 'partner.org',
      bundleEndpointUrl: 'https://partner.org:8443/',
      profile: 'https_spiffe' as const,
      endpointSpiffeId: 'spiffe://partner.org/spire/server',
    };
    await store.updateFederationRelationship(spiffe, 'uid:0', { document: '{"keys":[]}' });
    expect(await store.getFederationRelationship('partner.org')).toEqual({
      ...spiffe,
      createdAt: 1_700_000_000,
      updatedAt: 1_700_000_000,
    });
    expect(await store.getBundle('partner.org')).toMatchObject({ sequence: 1, federated: true });
    // Back to https_web: the endpoint ID is gone, not left behind.
    await store.updateFederationRelationship(web, 'uid:0');
    expect(await store.getFederationRelationship('partner.org')).not.toHaveProperty('endpointSpiffeId');
    await store.createFederationRelationship(
      { ...web, trustDomain: 'other.org', bundleEndpointUrl: 'https://other.org/b' },
      'uid:1',
      { document: '{"keys":[1]}' },
    );
    expect((await store.listFederationRelationships()).map((r) => r.trustDomain)).toEqual([
      'other.org',
      'partner.org',
    ]);
    expect(await store.deleteFederationRelationship('partner.org', 'uid:0')).toMatchObject(web);
    expect(await store.getFederationRelationship('partner.org')).toBeUndefined();
    expect(await store.getBundle('partner.org')).toMatchObject({ sequence: 1 });
    await expect(store.deleteFederationRelationship('partner.org', 'uid:0')).rejects.toMatchObject({
      code: 'ERR_FEDERATION_NOT_FOUND',
    });
    await expect(store.updateFederationRelationship(web, 'uid:0')).rejects.toMatchObject({
      code: 'ERR_FEDERATION_NOT_FOUND',
    });
    const log = (await store.listAudit(20)).reverse().map((r) => [r.action, r.objectId, r.actor]);
    expect(log).toEqual([
      ['federation.create', 'partner.org', 'uid:0'],
      ['federation.update', 'partner.org', 'uid:0'],
      ['bundle.set', 'partner.org', 'uid:0'],
      ['federation.update', 'partner.org', 'uid:0'],
      ['federation.create', 'other.org', 'uid:1'],
      ['bundle.set', 'other.org', 'uid:1'],
      ['federation.delete', 'partner.org', 'uid:0'],
    ]);
    expect((await store.listAudit(20)).find((r) => r.action === 'federation.update')?.detail).toEqual({
      before: {
        bundle_endpoint_url: 'https://partner.org:8443/',
        profile: 'https_spiffe',
        endpoint_spiffe_id: 'spiffe://partner.org/spire/server',
      },
      after: { bundle_endpoint_url: 'https://partner.org/bundle', profile: 'https_web' },
    });
  });

  it('writes neither the relationship nor its bundle when the create is refused', async () => {
    const web = {
      trustDomain: 'partner.org',
      bundleEndpointUrl: 'https://p/b',
      profile: 'https_web' as const,
    };
    await store.createFederationRelationship(web, 'uid:0');
    await expect(
      store.createFederationRelationship(web, 'uid:0', { document: '{"keys":[]}' }),
    ).rejects.toMatchObject({ code: 'ERR_FEDERATION_EXISTS' });
    expect(await store.getBundle('partner.org')).toBeUndefined();
  });

  it('lets exactly one of concurrent creates of a relationship through', async () => {
    const web = {
      trustDomain: 'partner.org',
      bundleEndpointUrl: 'https://p/b',
      profile: 'https_web' as const,
    };
    const outcomes = await Promise.allSettled(
      Array.from({ length: 8 }, () => store.createFederationRelationship(web, 'uid:0')),
    );
    expect(outcomes.filter((o) => o.status === 'fulfilled')).toHaveLength(1);
    for (const o of outcomes)
      if (o.status === 'rejected') expect(o.reason).toMatchObject({ code: 'ERR_FEDERATION_EXISTS' });
  });
});
