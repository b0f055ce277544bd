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
import type { ConnectionOptions } from 'node:tls';
import { Kysely, PostgresDialect, sql } from 'kysely';
import pg from 'pg';
import type { Clock } from '../clock.js';
import { redactSecrets } from '../config/load.js';
import { DatastoreError } from '../errors.js';
import { migrateToLatest } from './migrations.js';
import { SqlDatastore } from './sql-datastore.js';
import type { OpenedDatastore } from './sqlite.js';
import type { Database } from './tables.js';

/** How long a reader of the audit log waits for transactions running when it started. */
const SETTLE_TIMEOUT_MS = 30_000;
/** How long a new connection may take before the caller gets an error (a stopped server never answers). */
const CONNECT_TIMEOUT_MS = 10_000;
/** How long `ping` (readiness) waits for an answer before it calls the database unreachable. */
const PING_TIMEOUT_MS = 5_000;
/**
 * The session-level advisory lock servers take around migrations: "ironroot" in ASCII, as a
 * bigint. Only one server migrates; the others wait, then find the schema current.
 */
export const MIGRATION_LOCK_KEY = '7598264089880587124';

export interface PostgresOptions {
  settleTimeoutMs?: number;
  /** At most this many connections (default 10). */
  maxConnections?: number;
  /** Close connections unused this long; pg's default when unset. */
  idleTimeoutMs?: number;
  /** Node TLS options, or false for none; pg's environment-based default when unset. */
  ssl?: false | ConnectionOptions;
  /**
   * Told when a pooled connection breaks (the database restarted, or ended it): idle, the pool drops
   * it; in use, the query on it fails and the pool drops it when it comes back.
   */
  onConnectionError?: (error: Error) => void;
}

export async function openPostgresDatastore(
  connectionString: string,
  clock: Clock,
  options: PostgresOptions = {},
): Promise<OpenedDatastore> {
  const pool = new pg.Pool({
    connectionString,
    max: options.maxConnections ?? 10,
    connectionTimeoutMillis: CONNECT_TIMEOUT_MS,
    keepAlive: true,
    ...(options.idleTimeoutMs !== undefined ? { idleTimeoutMillis: options.idleTimeoutMs } : {}),
    ...(options.ssl !== undefined ? { ssl: options.ssl } : {}),
  });
  // A connection that ends unexpectedly emits 'error', and without a listener that ends the process.
  // The pool listens on idle connections only, so every connection gets one of its own from the
  // start: one in use at that moment (a query in flight, a transaction) fails its query instead, and
  // the pool drops it on release. The pool's own event repeats what this one reported.
  pool.on('connect', (client) => client.on('error', (error) => options.onConnectionError?.(error)));
  pool.on('error', () => {});
  const db = new Kysely<Database>({ dialect: new PostgresDialect({ pool }) });
  let migrated: string[];
  try {
    // A connection of its own, outside the pool: the migrations need the pool's (max_connections may be 1).
    const lockClient = new pg.Client({
      connectionString,
      connectionTimeoutMillis: CONNECT_TIMEOUT_MS,
      ...(options.ssl !== undefined ? { ssl: options.ssl } : {}),
    });
    // Its connection ending unexpectedly fails the migration's queries, which report it; the event
    // the client also emits would otherwise end the process.
    lockClient.on('error', () => {});
    migrated = await migrateUnderLock(lockClient, db);
  } catch (error) {
    await db.destroy();
    throw error;
  }
  const timeoutMs = options.settleTimeoutMs ?? SETTLE_TIMEOUT_MS;
  return {
    datastore: new PostgresDatastore(db, clock, { settleWriters: (on) => settleWriters(on, timeoutMs) }),
    migrated,
    path: redactSecrets(connectionString),
  };
}

/**
 * Runs the migrations holding the advisory lock on `lockClient`, so that servers starting together
 * on a fresh database do not race to create the same tables. The lock goes with the session, also
 * when this process dies.
 */
async function migrateUnderLock(lockClient: pg.Client, db: Kysely<Database>): Promise<string[]> {
  try {
    await lockClient.connect();
  } catch (error) {
    throw new DatastoreError(
      `cannot connect to PostgreSQL: ${(error as Error).message}; check datastore.connection_string and that the database accepts connections`,
      error,
    );
  }
  try {
    await lockClient.query('SELECT pg_advisory_lock($1::bigint)', [MIGRATION_LOCK_KEY]);
    return await migrateToLatest(db as Kysely<unknown>, 'postgres');
  } finally {
    // Ending the session releases the lock, also when the unlock query itself could not be sent.
    await lockClient.end().catch(() => undefined);
  }
}

/** The SQL datastore whose readiness ping gives up on a database that does not answer. */
class PostgresDatastore extends SqlDatastore {
  override async ping(): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_resolve, reject) => {
      timer = setTimeout(
        () => reject(new DatastoreError(`PostgreSQL did not answer within ${PING_TIMEOUT_MS / 1000} s`)),
        PING_TIMEOUT_MS,
      );
    });
    try {
      await Promise.race([super.ping(), timeout]);
    } finally {
      clearTimeout(timer);
    }
  }
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
