/**
 * Opens the default datastore: one SQLite file under the data dir, WAL with synchronous=FULL so an
 * acknowledged commit survives a crash or power loss, file 0600 in a 0700 directory.
 *
 * @module
 */
import { chmodSync, closeSync, existsSync, mkdirSync, openSync } from 'node:fs';
import { join } from 'node:path';
import BetterSqlite3 from 'better-sqlite3';
import { type DatabaseConnection, type Driver, Kysely, SqliteDialect, SqliteDriver } from 'kysely';
import type { Clock } from '../clock.js';
import { DatastoreError } from '../errors.js';
import type { Datastore } from './datastore.js';
import { migrateToLatest } from './migrations.js';
import {
  type EntryBatchStatements,
  type EntryIdentityRow,
  type EntryRows,
  type HotReads,
  NODE_COLUMNS,
  type NodeColumns,
  type NodeRows,
  SqlDatastore,
} from './sql-datastore.js';
import type { Database, RegistrationEntryRow } from './tables.js';

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
export function readSqliteColumn(dataDir: string, table: string, sql: string): string[] {
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
  return readSqliteColumn(
    dataDir,
    'bundles',
    'SELECT trust_domain FROM bundles WHERE federated = 0 ORDER BY trust_domain',
  );
}

/** The key ids the data dir's CA journal names; empty when there is no datastore yet. */
export function storedCaKeyIds(dataDir: string): string[] {
  return readSqliteColumn(dataDir, 'ca_journal', 'SELECT key_id FROM ca_journal ORDER BY key_id');
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
  const db = new Kysely<Database>({ dialect: new CauseKeepingSqliteDialect(sqlite) });
  const migrated = await migrateToLatest(db as Kysely<unknown>, 'sqlite');
  return {
    datastore: new SqlDatastore(db, clock, {
      entryBatch: entryBatchStatements(sqlite),
      hotReads: hotReads(sqlite),
    }),
    migrated,
    path,
  };
}

/**
 * The agent API's per-call reads through statements prepared once, on first use (after the
 * migrations). Kysely's SQLite driver runs everything on this one connection, holding it for a
 * whole transaction across awaits: read then, these would see that transaction's uncommitted rows,
 * so they run only outside one (`ready`), and the query builder, which waits its turn, reads
 * otherwise.
 */
export function hotReads(sqlite: BetterSqlite3.Database): HotReads {
  let statements:
    | { node: (spiffeId: string) => NodeRows | undefined; head: BetterSqlite3.Statement }
    | undefined;
  const prepared = () => {
    if (statements !== undefined) return statements;
    const node = sqlite.prepare(`SELECT ${NODE_COLUMNS.join(', ')} FROM attested_nodes WHERE spiffe_id = ?`);
    const selectors = sqlite.prepare(
      'SELECT type, value FROM node_selectors WHERE spiffe_id = ? ORDER BY type, value',
    );
    const ban = sqlite.prepare('SELECT 1 FROM banned_nodes WHERE spiffe_id = ?').pluck();
    statements = {
      // One read transaction for the three: one snapshot, and one WAL read lock instead of three
      // (the lock was a third of the reads' cost).
      node: sqlite.transaction((spiffeId: string): NodeRows | undefined => {
        const row = node.get(spiffeId) as NodeColumns | undefined;
        if (row === undefined) return undefined;
        return {
          node: row,
          selectors: selectors.all(spiffeId) as { type: string; value: string }[],
          banned: ban.get(spiffeId) !== undefined,
        };
      }),
      head: sqlite.prepare('SELECT id FROM audit_log ORDER BY id DESC LIMIT 1').pluck(),
    };
    return statements;
  };
  return {
    ready: () => !sqlite.inTransaction,
    node: (spiffeId) => prepared().node(spiffeId),
    newestAuditId: () => Number(prepared().head.get() ?? 0),
  };
}

/** `INSERT INTO table (columns) VALUES (?, …)`, its values bound by position. */
function insertStatement(sqlite: BetterSqlite3.Database, table: string, columns: readonly string[]) {
  return sqlite.prepare(
    `INSERT INTO ${table} (${columns.join(', ')}) VALUES (${columns.map(() => '?').join(', ')})`,
  );
}

/**
 * A batch of new entries through statements prepared once: the query builder's cost per value
 * (building, compiling and preparing a statement per chunk) was more than SQLite's own work
 * (docs/performance.md). The SPIFFE IDs to look up go as one JSON array (json_each), not a parameter
 * each. Each row's values are passed by position, field by field: binding by name costs
 * better-sqlite3 a lookup per value, and gathering them through the column list cost an array and a
 * lookup by key per row. Kysely's SQLite driver has one connection and runs one query at a time, so
 * called inside a Kysely transaction these run inside it.
 */
function entryBatchStatements(sqlite: BetterSqlite3.Database): EntryBatchStatements {
  let identities: BetterSqlite3.Statement | undefined;
  let insert:
    | {
        entry: BetterSqlite3.Statement;
        selector: BetterSqlite3.Statement;
        federatesWith: BetterSqlite3.Statement;
        audit: BetterSqlite3.Statement;
      }
    | undefined;
  const inTransaction = () => {
    if (!sqlite.inTransaction)
      throw new DatastoreError('a batch of entries must be read and written inside a transaction');
  };
  const identitiesOf = (spiffeIds: readonly string[]): EntryIdentityRow[] => {
    inTransaction();
    identities ??= sqlite.prepare(
      'SELECT id, spiffe_id, parent_id, selectors_key FROM registration_entries WHERE spiffe_id IN (SELECT value FROM json_each(?))',
    );
    return identities.all(JSON.stringify(spiffeIds)) as EntryIdentityRow[];
  };
  const write = (rows: EntryRows) => {
    inTransaction();
    insert ??= {
      entry: insertStatement(sqlite, 'registration_entries', ENTRY_COLUMNS),
      selector: insertStatement(sqlite, 'entry_selectors', ['entry_id', 'type', 'value']),
      federatesWith: insertStatement(sqlite, 'entry_federates_with', ['entry_id', 'trust_domain']),
      audit: insertStatement(sqlite, 'audit_log', [
        'at',
        'actor',
        'action',
        'object_type',
        'object_id',
        'detail',
      ]),
    };
    for (const r of rows.entries) {
      // In ENTRY_COLUMNS order.
      insert.entry.run(
        r.id,
        r.spiffe_id,
        r.parent_id,
        r.selectors_key,
        r.x509_svid_ttl,
        r.jwt_svid_ttl,
        r.dns_names,
        r.admin,
        r.downstream,
        r.hint,
        r.expires_at,
        r.revision_number,
        r.created_at,
        r.updated_at,
      );
    }
    for (const r of rows.selectors) insert.selector.run(r.entry_id, r.type, r.value);
    for (const r of rows.federatesWith) insert.federatesWith.run(r.entry_id, r.trust_domain);
    for (const r of rows.audit)
      insert.audit.run(r.at, r.actor, r.action, r.object_type, r.object_id, r.detail);
  };
  return { identities: identitiesOf, write };
}

const ENTRY_COLUMNS: readonly (keyof RegistrationEntryRow)[] = [
  'id',
  'spiffe_id',
  'parent_id',
  'selectors_key',
  'x509_svid_ttl',
  'jwt_svid_ttl',
  'dns_names',
  'admin',
  'downstream',
  'hint',
  'expires_at',
  'revision_number',
  'created_at',
  'updated_at',
];

/**
 * SQLite ends a transaction by itself on some failures (a full disk, an I/O error, no memory). The
 * ROLLBACK Kysely then sends fails with "no transaction is active", and that error, not the one
 * that said what went wrong, would reach the caller and the log. Here the rollback is sent only
 * while SQLite still has a transaction open.
 */
class CauseKeepingSqliteDialect extends SqliteDialect {
  readonly #sqlite: BetterSqlite3.Database;

  constructor(sqlite: BetterSqlite3.Database) {
    super({ database: sqlite });
    this.#sqlite = sqlite;
  }

  override createDriver(): Driver {
    return new CauseKeepingSqliteDriver(this.#sqlite);
  }
}

class CauseKeepingSqliteDriver extends SqliteDriver {
  readonly #sqlite: BetterSqlite3.Database;

  constructor(sqlite: BetterSqlite3.Database) {
    super({ database: sqlite });
    this.#sqlite = sqlite;
  }

  override async rollbackTransaction(connection: DatabaseConnection): Promise<void> {
    if (this.#sqlite.inTransaction) await super.rollbackTransaction(connection);
  }
}
