/**
 * Opens the datastore the configuration names, and answers the few questions the CLI asks of a
 * datastore without a running server (which trust domain, which CA keys), for both kinds.
 *
 * @module
 */
import { readFileSync } from 'node:fs';
import type { ConnectionOptions } from 'node:tls';
import type { Clock } from '../clock.js';
import { redactSecrets } from '../config/load.js';
import { type ServerConfig, TLS_URI_PARAMS } from '../config/schema.js';
import { ConfigFileError, ConfigInvalidError, DatastoreError } from '../errors.js';
import type { OpenedDatastore } from './sqlite.js';

type PostgresConfig = Extract<ServerConfig['datastore'], { type: 'postgres' }>;

export interface PostgresConnection {
  connectionString: string;
  ssl: false | ConnectionOptions;
  maxConnections: number;
  idleTimeoutMs?: number;
}

/**
 * The connection string (read from connection_string_file when so configured) and the TLS options
 * for pg. The file's own mode is checked by the safety checks; here its content is.
 */
export function postgresConnection(datastore: PostgresConfig): PostgresConnection {
  const connectionString =
    datastore.connection_string ?? readConnectionFile(datastore.connection_string_file ?? '');
  const { tls } = datastore;
  let ssl: false | ConnectionOptions = false;
  if (tls.mode === 'require') ssl = { rejectUnauthorized: false };
  if (tls.mode === 'verify-full') {
    ssl = { rejectUnauthorized: true };
    if (tls.ca_file !== undefined) ssl.ca = readCaFile(tls.ca_file);
  }
  return {
    connectionString,
    ssl,
    maxConnections: datastore.pool.max_connections,
    ...(datastore.pool.idle_timeout !== undefined
      ? { idleTimeoutMs: datastore.pool.idle_timeout * 1000 }
      : {}),
  };
}

function readConnectionFile(file: string): string {
  let text: string;
  try {
    text = readFileSync(file, 'utf8').trim();
  } catch (error) {
    throw new ConfigFileError(
      `datastore.connection_string_file ${file} cannot be read: ${(error as Error).message}`,
      error,
    );
  }
  const problems: string[] = [];
  if (!/^postgres(ql)?:\/\//.test(text))
    problems.push(
      'must hold one postgresql:// URI, e.g. postgresql://ironroot:secret@db.example.org/ironroot',
    );
  const query = new URLSearchParams(text.split('?')[1]);
  const tlsParams = TLS_URI_PARAMS.filter((p) => query.has(p));
  if (tlsParams.length > 0)
    problems.push(`names ${tlsParams.join(', ')}; remove it and say it under datastore.tls`);
  if (problems.length > 0)
    throw new ConfigInvalidError(
      file,
      problems.map((p) => `datastore.connection_string_file: ${p}`),
    );
  return text;
}

function readCaFile(file: string): string {
  try {
    return readFileSync(file, 'utf8');
  } catch (error) {
    throw new ConfigFileError(
      `datastore.tls.ca_file ${file} cannot be read: ${(error as Error).message}`,
      error,
    );
  }
}

export interface OpenOptions {
  /** Told when a PostgreSQL connection of the pool breaks (the pool replaces it). */
  onConnectionError?: (error: Error) => void;
}

/** The configured datastore, migrated to the current schema. */
export async function openConfiguredDatastore(
  config: Pick<ServerConfig, 'data_dir' | 'datastore'>,
  clock: Clock,
  options: OpenOptions = {},
): Promise<OpenedDatastore> {
  if (config.datastore.type === 'sqlite') {
    const { openSqliteDatastore } = await import('./sqlite.js');
    return openSqliteDatastore(config.data_dir, clock);
  }
  const connection = postgresConnection(config.datastore);
  const { openPostgresDatastore } = await import('./postgres.js');
  return openPostgresDatastore(connection.connectionString, clock, {
    maxConnections: connection.maxConnections,
    ssl: connection.ssl,
    ...(connection.idleTimeoutMs !== undefined ? { idleTimeoutMs: connection.idleTimeoutMs } : {}),
    ...(options.onConnectionError ? { onConnectionError: options.onConnectionError } : {}),
  });
}

/**
 * One column of `query` from the configured datastore, read without writing anything (a server may
 * be running on it): empty when there is no datastore yet or no such table.
 *
 * @throws DatastoreError when it cannot be read.
 */
async function readColumn(
  config: Pick<ServerConfig, 'data_dir' | 'datastore'>,
  table: string,
  query: string,
): Promise<string[]> {
  if (config.datastore.type === 'sqlite') {
    const { readSqliteColumn } = await import('./sqlite.js');
    return readSqliteColumn(config.data_dir, table, query);
  }
  const connection = postgresConnection(config.datastore);
  const { default: pg } = await import('pg');
  const client = new pg.Client({
    connectionString: connection.connectionString,
    ssl: connection.ssl,
    connectionTimeoutMillis: 10_000,
  });
  // A connection ending unexpectedly also emits 'error', which would end the process: the failed
  // query below reports it.
  client.on('error', () => {});
  try {
    await client.connect();
    const exists = await client.query('SELECT to_regclass($1) IS NOT NULL AS present', [table]);
    if (exists.rows[0]?.present !== true) return [];
    const result = await client.query({ text: query, rowMode: 'array' });
    return result.rows.map((row: unknown[]) => String(row[0]));
  } catch (error) {
    throw new DatastoreError(
      `cannot read PostgreSQL datastore ${redactSecrets(connection.connectionString)}: ${(error as Error).message}`,
      error,
    );
  } finally {
    await client.end().catch(() => undefined);
  }
}

/**
 * The trust domains whose own (not federated) bundle the datastore holds; empty when there is no
 * datastore yet, or its CA never started.
 */
export function storedOwnTrustDomains(
  config: Pick<ServerConfig, 'data_dir' | 'datastore'>,
): Promise<string[]> {
  return readColumn(
    config,
    'bundles',
    'SELECT trust_domain FROM bundles WHERE federated = 0 ORDER BY trust_domain',
  );
}

/** The key ids the datastore's CA journal names; empty when there is no datastore yet. */
export function storedCaKeyIds(config: Pick<ServerConfig, 'data_dir' | 'datastore'>): Promise<string[]> {
  return readColumn(config, 'ca_journal', 'SELECT key_id FROM ca_journal ORDER BY key_id');
}

/** Where the configured datastore is, for messages: the data dir's file, or the redacted URI. */
export function datastoreLocation(config: Pick<ServerConfig, 'data_dir' | 'datastore'>): string {
  if (config.datastore.type === 'sqlite') return `data_dir ${config.data_dir}`;
  const where =
    config.datastore.connection_string ?? `the URI in ${config.datastore.connection_string_file ?? ''}`;
  return `datastore ${redactSecrets(where)}`;
}
