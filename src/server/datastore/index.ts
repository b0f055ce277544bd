export type * from './datastore.js';
export { type Dialect, migrateToLatest, migrationsFor } from './migrations.js';
export { SqlDatastore, selectorsKey } from './sql-datastore.js';
export {
  type OpenedDatastore,
  openSqliteDatastore,
  SQLITE_FILE,
  storedCaKeyIds,
  storedOwnTrustDomains,
} from './sqlite.js';
