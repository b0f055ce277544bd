import { mkdirSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import BetterSqlite3 from 'better-sqlite3';
import { Kysely, SqliteDialect } from 'kysely';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { migrateToLatest, SqlDatastore } from '../../src/server/datastore/index.js';
import { hotReads } from '../../src/server/datastore/sqlite.js';
import type { Database } from '../../src/server/datastore/tables.js';

const TD = 'spiffe://example.org';
const T0 = 1_700_000_000;

// The SQLite datastore answers the agent API's per-call reads (getNode, the audit head) through
// statements prepared once. These compare them with the query builder's answers on the same
// connection, and show they never read a transaction's uncommitted rows.
describe('SQLite per-call reads through statements prepared once', () => {
  let sqlite: BetterSqlite3.Database;
  let db: Kysely<Database>;
  /** With the prepared reads, as openSqliteDatastore makes it. */
  let hot: SqlDatastore;
  /** The same connection through the query builder only. */
  let built: SqlDatastore;
  const clock = { now: () => T0 * 1000 };

  beforeEach(async () => {
    const dir = mkdtempSync(join(tmpdir(), 'ironroot-hot-reads-'));
    mkdirSync(dir, { recursive: true });
    sqlite = new BetterSqlite3(join(dir, 'datastore.sqlite3'));
    sqlite.pragma('foreign_keys = ON');
    db = new Kysely<Database>({ dialect: new SqliteDialect({ database: sqlite }) });
    await migrateToLatest(db as Kysely<unknown>, 'sqlite');
    hot = new SqlDatastore(db, clock, { hotReads: hotReads(sqlite) });
    built = new SqlDatastore(db, clock);
  });
  afterEach(async () => {
    await db.destroy();
  });

  const base = {
    attestationType: 'join_token',
    serialNumber: '0a',
    attestationCount: 1,
    expiresAt: T0 + 3600,
    selectors: [],
    createdAt: T0,
  };

  it('reads every kind of node as the query builder does', async () => {
    const ids = {
      plain: `${TD}/agent/join_token/plain`,
      tpm: `${TD}/agent/tpm/${'ab'.repeat(32)}`,
      banned: `${TD}/agent/join_token/banned`,
      untrusted: `${TD}/agent/tpm/${'cd'.repeat(32)}`,
      renewed: `${TD}/agent/join_token/renewed`,
      banOnly: `${TD}/agent/join_token/ban-only`,
      missing: `${TD}/agent/join_token/missing`,
    };
    await hot.upsertNode({ ...base, spiffeId: ids.plain }, 'test');
    await hot.upsertNode(
      {
        ...base,
        spiffeId: ids.tpm,
        attestationType: 'tpm',
        newSerialNumber: '0b',
        svidAuthority: 'ironroot-x509-1',
        attestationCount: 3,
        // Given out of order: both read them ordered by type, then value.
        selectors: [
          { type: 'tpm', value: 'pcr:7:ff' },
          { type: 'tpm', value: 'ek-hash:ab' },
          { type: 'boot', value: 'secure' },
        ],
        tpm: {
          ekHash: 'ab'.repeat(32),
          ekIssuer: 'CN=EK CA',
          akPublic: new Uint8Array([1, 2, 3]),
          lastQuote: new Uint8Array([4, 5]),
          resetCount: 7,
          eventLog: new Uint8Array([9, 9, 9]),
        },
      },
      'test',
    );
    await hot.banNode({ spiffeId: ids.banned }, 'test');
    await hot.upsertNode({ ...base, spiffeId: ids.banned }, 'test');
    await hot.upsertNode(
      {
        ...base,
        spiffeId: ids.untrusted,
        attestationType: 'tpm',
        tpm: { ekHash: 'cd'.repeat(32), akPublic: new Uint8Array([6]) },
      },
      'test',
    );
    await hot.recordNodeTrust(
      ids.untrusted,
      { trust: { state: 'untrusted', code: 'ERR_X', reason: 'why', details: '{}', changedAt: T0 + 5 } },
      'test',
    );
    await hot.upsertNode({ ...base, spiffeId: ids.renewed, newSerialNumber: '0c' }, 'test');
    expect(await hot.promoteNodeSerial(ids.renewed, '0c', 'test')).toBe(true);
    await hot.banNode({ spiffeId: ids.banOnly }, 'test');

    for (const id of Object.values(ids)) {
      const read = await hot.getNode(id);
      expect(read).toStrictEqual(await built.getNode(id));
      // The query builder's listing agrees too (it reads all nodes in one go).
      expect(read).toStrictEqual((await built.listNodes()).find((n) => n.spiffeId === id));
    }
    expect(await hot.getNode(ids.tpm)).toMatchObject({
      newSerialNumber: '0b',
      svidAuthority: 'ironroot-x509-1',
      selectors: [
        { type: 'boot', value: 'secure' },
        { type: 'tpm', value: 'ek-hash:ab' },
        { type: 'tpm', value: 'pcr:7:ff' },
      ],
      tpm: { ekIssuer: 'CN=EK CA', resetCount: 7 },
    });
    expect((await hot.getNode(ids.tpm))?.tpm?.eventLog).toBeUndefined();
    // Asked for, the event log comes through the query builder.
    expect(Buffer.from((await hot.getNode(ids.tpm, { eventLog: true }))?.tpm?.eventLog ?? [])).toEqual(
      Buffer.from([9, 9, 9]),
    );
    expect((await hot.getNode(ids.banned))?.banned).toBe(true);
    expect((await hot.getNode(ids.untrusted))?.trust.state).toBe('untrusted');
    expect(await hot.getNode(ids.banOnly)).toBeUndefined();
    expect(await hot.getNode(ids.missing)).toBeUndefined();
  });

  it('reads the audit head as the query builder does, from an empty log on', async () => {
    expect(await hot.changesSince(0)).toEqual({ head: 0, entryIds: [], nodeIds: [], gap: false });
    expect(await hot.settledAuditHead()).toBe(0);
    await hot.upsertNode({ ...base, spiffeId: `${TD}/agent/join_token/a` }, 'test');
    const head = await built.settledAuditHead();
    expect(head).toBeGreaterThan(0);
    expect(await hot.settledAuditHead()).toBe(head);
    expect(await hot.changesSince(head)).toEqual(await built.changesSince(head));
    expect(await hot.changesSince(0)).toEqual(await built.changesSince(0));
  });

  it('never reads a transaction’s uncommitted rows: a read made during one waits, and sees it rolled back', async () => {
    const id = `${TD}/agent/join_token/uncommitted`;
    const headBefore = await hot.settledAuditHead();
    let duringNode: Promise<unknown> | undefined;
    let duringHead: Promise<unknown> | undefined;
    await expect(
      db.transaction().execute(async (trx) => {
        await trx
          .insertInto('attested_nodes')
          .values({
            spiffe_id: id,
            attestation_type: 'join_token',
            serial_number: '01',
            new_serial_number: null,
            expires_at: T0 + 3600,
            ek_hash: null,
            ak_public: null,
            last_quote: null,
            reset_count: null,
            ek_issuer: null,
            attestation_count: 1,
            svid_authority: null,
            event_log: null,
            trust_state: 'trusted',
            trust_code: null,
            trust_reason: null,
            trust_details: null,
            trust_changed_at: T0,
            created_at: T0,
            updated_at: T0,
          })
          .execute();
        await trx
          .insertInto('audit_log')
          .values({
            at: T0,
            actor: 'test',
            action: 'node.upsert',
            object_type: 'node',
            object_id: id,
            detail: '{}',
          })
          .execute();
        // Reads as a concurrent agent API call would make them, while the rows are uncommitted.
        duringNode = hot.getNode(id);
        duringHead = hot.settledAuditHead();
        throw new Error('rolled back');
      }),
    ).rejects.toThrow('rolled back');
    expect(await duringNode).toBeUndefined();
    expect(await duringHead).toBe(headBefore);
  });
});
