/**
 * The PostgreSQL datastore, for several servers sharing one database (HA). Same schema,
 * migrations and queries as SQLite (sql-datastore.ts); each acknowledged write is a committed
 * transaction, durable under PostgreSQL's defaults (fsync, synchronous_commit on).
 *
 * Servers sharing it agree on who changes the CA journal through the rotation lease and the
 * journal version (see ca/authority.ts).
 *
 * @module
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { Kysely, PostgresDialect, sql } from 'kysely';
import pg from 'pg';
import type { Clock } from '../clock.js';
import { DatastoreError } from '../errors.js';
import { migrateToLatest } from './migrations.js';
import { SqlDatastore } from './sql-datastore.js';
import type { OpenedDatastore } from './sqlite.js';
import type { Database } from './tables.js';

/** How long a reader of the audit log waits for transactions running when it started. */
const SETTLE_TIMEOUT_MS = 30_000;

export async function openPostgresDatastore(
  connectionString: string,
  clock: Clock,
  options: { settleTimeoutMs?: number } = {},
): Promise<OpenedDatastore> {
  const pool = new pg.Pool({ connectionString, max: 10 });
  const db = new Kysely<Database>({ dialect: new PostgresDialect({ pool }) });
  const migrated = await migrateToLatest(db as Kysely<unknown>, 'postgres');
  const timeoutMs = options.settleTimeoutMs ?? SETTLE_TIMEOUT_MS;
  return {
    datastore: new SqlDatastore(db, clock, { settleWriters: (on) => settleWriters(on, timeoutMs) }),
    migrated,
    path: connectionString.replace(/:[^:@/]*@/, ':REDACTED@'),
  };
}

/**
 * Waits until every transaction that had a transaction id when it was called has ended: a
 * snapshot's xmax is above every such id, and a later snapshot's xmin is the oldest id still
 * running. Audit records are appended after a transaction's first write (which takes its id), so
 * a record whose audit id was taken before the call belongs to one of them. xid8 values (64-bit,
 * never wrapping) come back as text.
 */
async function settleWriters(db: Kysely<Database>, timeoutMs: number): Promise<void> {
  const started = await sql<{
    xid: string;
  }>`select pg_snapshot_xmax(pg_current_snapshot())::text as xid`.execute(db);
  const until = BigInt(started.rows[0]?.xid ?? '0');
  const deadline = performance.now() + timeoutMs;
  for (let pause = 1; ; pause = Math.min(pause * 2, 50)) {
    const now = await sql<{
      xid: string;
    }>`select pg_snapshot_xmin(pg_current_snapshot())::text as xid`.execute(db);
    if (BigInt(now.rows[0]?.xid ?? '0') >= until) return;
    if (performance.now() > deadline)
      throw new DatastoreError(
        `a PostgreSQL transaction has been running for over ${timeoutMs / 1000} s, and entry changes it may ` +
          'commit cannot be read in order until it ends; find it in pg_stat_activity (state "idle in ' +
          'transaction" or a long query) and end it; the next agent call tries again',
      );
    await sleep(pause);
  }
}
