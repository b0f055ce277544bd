/**
 * Opens the default datastore: one SQLite file under the data dir, WAL with synchronous=FULL so an
 * acknowledged commit survives a crash or power loss, file 0600 in a 0700 directory.
 *
 * @module
 */
import { chmodSync, closeSync, existsSync, mkdirSync, openSync } from 'node:fs';
import { join } from 'node:path';
import BetterSqlite3 from 'better-sqlite3';
import { Kysely, SqliteDialect } from 'kysely';
import type { Clock } from '../clock.js';
import { DatastoreError } from '../errors.js';
import type { Datastore } from './datastore.js';
import { migrateToLatest } from './migrations.js';
import { SqlDatastore } from './sql-datastore.js';
import type { Database } from './tables.js';

export const SQLITE_FILE = 'datastore.sqlite3';

export interface OpenedDatastore {
  datastore: Datastore;
  /** Migrations applied by this open, oldest first (empty when the schema was current). */
  migrated: string[];
  path: string;
}

/**
 * One column of `sql` over `table` in the data dir's datastore, read without writing anything (a
 * server may be running on it); empty when there is no datastore yet or no such table.
 *
 * @throws DatastoreError when it cannot be read.
 */
function readColumn(dataDir: string, table: string, sql: string): string[] {
  const path = join(dataDir, SQLITE_FILE);
  if (!existsSync(path)) return [];
  let sqlite: BetterSqlite3.Database | undefined;
  try {
    // Not `readonly`: a read-only connection to a WAL database leaves -wal and -shm files behind,
    // where a read-write one removes them on close. query_only keeps it from writing anything.
    sqlite = new BetterSqlite3(path, { fileMustExist: true });
    sqlite.pragma('query_only = ON');
    sqlite.pragma('busy_timeout = 5000');
    const exists = sqlite.prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?").get(table);
    if (exists === undefined) return [];
    return sqlite
      .prepare(sql)
      .raw()
      .all()
      .map((row) => String((row as unknown[])[0]));
  } catch (error) {
    throw new DatastoreError(`cannot read SQLite datastore ${path}: ${(error as Error).message}`, error);
  } finally {
    sqlite?.close();
  }
}

/**
 * The trust domains whose own (not federated) bundle the data dir's datastore holds; empty when
 * there is no datastore yet, or its CA never started.
 */
export function storedOwnTrustDomains(dataDir: string): string[] {
  return readColumn(
    dataDir,
    'bundles',
    'SELECT trust_domain FROM bundles WHERE federated = 0 ORDER BY trust_domain',
  );
}

/** The key ids the data dir's CA journal names; empty when there is no datastore yet. */
export function storedCaKeyIds(dataDir: string): string[] {
  return readColumn(dataDir, 'ca_journal', 'SELECT key_id FROM ca_journal ORDER BY key_id');
}

export async function openSqliteDatastore(dataDir: string, clock: Clock): Promise<OpenedDatastore> {
  mkdirSync(dataDir, { recursive: true, mode: 0o700 });
  chmodSync(dataDir, 0o700);
  const path = join(dataDir, SQLITE_FILE);
  // Create the file ourselves so it is 0600 from its first byte, whatever the umask.
  if (!existsSync(path)) closeSync(openSync(path, 'a', 0o600));
  chmodSync(path, 0o600);
  let sqlite: BetterSqlite3.Database;
  try {
    sqlite = new BetterSqlite3(path);
    sqlite.pragma('journal_mode = WAL');
    sqlite.pragma('synchronous = FULL');
    sqlite.pragma('foreign_keys = ON');
    sqlite.pragma('busy_timeout = 5000');
  } catch (error) {
    throw new DatastoreError(`cannot open SQLite datastore ${path}: ${(error as Error).message}`, error);
  }
  for (const sidecar of [`${path}-wal`, `${path}-shm`]) {
    if (existsSync(sidecar)) chmodSync(sidecar, 0o600);
  }
  const db = new Kysely<Database>({ dialect: new SqliteDialect({ database: sqlite }) });
  const migrated = await migrateToLatest(db as Kysely<unknown>, 'sqlite');
  return { datastore: new SqlDatastore(db, clock), migrated, path };
}
