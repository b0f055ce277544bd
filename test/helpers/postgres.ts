/**
 * A throw-away PostgreSQL cluster in a temporary directory, listening only on a Unix socket; the
 * implementation is shared with the benchmarks (scripts/lib/postgres-cluster.mjs).
 */
export { startPostgres, type TestPostgres } from '../../scripts/lib/postgres-cluster.mjs';
