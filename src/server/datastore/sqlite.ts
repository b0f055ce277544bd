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
 * The trust domains whose own (not federated) bundle the data dir's datastore holds, read without
 * writing anything; empty when there is no datastore yet, or its CA never started.
 */
export function storedOwnTrustDomains(dataDir: string): string[] {
  const path = join(dataDir, SQLITE_FILE);
  if (!existsSync(path)) return [];
  let sqlite: BetterSqlite3.Database | undefined;
  try {
    // Not `readonly`: a read-only connection to a WAL database leaves -wal and -shm files behind,
    // where a read-write one removes them on close. query_only keeps it from writing anything.
    sqlite = new BetterSqlite3(path, { fileMustExist: true });
    sqlite.pragma('query_only = ON');
    const table = sqlite
      .prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'bundles'")
      .get();
    if (table === undefined) return [];
    const rows = sqlite
      .prepare('SELECT trust_domain FROM bundles WHERE federated = 0 ORDER BY trust_domain')
      .all() as { trust_domain: string }[];
    return rows.map((r) => r.trust_domain);
  } catch (error) {
    throw new DatastoreError(`cannot read SQLite datastore ${path}: ${(error as Error).message}`, error);
  } finally {
    sqlite?.close();
  }
}

/**
 * The key ids the data dir's CA journal names, read without writing anything (the server may be
 * running); empty when there is no datastore yet. Throws DatastoreError when it cannot be read.
 */
export function storedCaKeyIds(dataDir: string): string[] {
  const path = join(dataDir, SQLITE_FILE);
  if (!existsSync(path)) return [];
  let sqlite: BetterSqlite3.Database | undefined;
  try {
    sqlite = new BetterSqlite3(path, { fileMustExist: true });
    sqlite.pragma('query_only = ON');
    sqlite.pragma('busy_timeout = 5000');
    const table = sqlite
      .prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'ca_journal'")
      .get();
    if (table === undefined) return [];
    const rows = sqlite.prepare('SELECT key_id FROM ca_journal ORDER BY key_id').all() as {
      key_id: string;
    }[];
    return rows.map((r) => r.key_id);
  } catch (error) {
    throw new DatastoreError(`cannot read SQLite datastore ${path}: ${(error as Error).message}`, error);
  } finally {
    sqlite?.close();
  }
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
