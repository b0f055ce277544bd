/**
 * The PostgreSQL datastore, for several servers sharing one database (HA). Same schema,
 * migrations and queries as SQLite (sql-datastore.ts); each acknowledged write is a committed
 * transaction, durable under PostgreSQL's defaults (fsync, synchronous_commit on).
 *
 * Not selectable in the server config yet: several servers also need to agree on who rotates the
 * CA, which the journal does not coordinate today.
 *
 * @module
 */
import { Kysely, PostgresDialect } from 'kysely';
import pg from 'pg';
import type { Clock } from '../clock.js';
import { migrateToLatest } from './migrations.js';
import { SqlDatastore } from './sql-datastore.js';
import type { OpenedDatastore } from './sqlite.js';
import type { Database } from './tables.js';

export async function openPostgresDatastore(
  connectionString: string,
  clock: Clock,
): Promise<OpenedDatastore> {
  const pool = new pg.Pool({ connectionString, max: 10 });
  const db = new Kysely<Database>({ dialect: new PostgresDialect({ pool }) });
  const migrated = await migrateToLatest(db as Kysely<unknown>, 'postgres');
  return {
    datastore: new SqlDatastore(db, clock),
    migrated,
    path: connectionString.replace(/:[^:@/]*@/, ':REDACTED@'),
  };
}
