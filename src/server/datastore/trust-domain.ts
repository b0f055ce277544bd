/**
 * Which trust domain a data dir belongs to. A server started on it with another trust domain would
 * sign SVIDs of the new one under the old one's CA certificate and bundle, beside entries and agents
 * that name the old one; so it is refused before anything is opened for writing.
 *
 * @module
 */
import type { ServerConfig } from '../config/schema.js';
import { TrustDomainMismatchError } from '../errors.js';
import { datastoreLocation, storedOwnTrustDomains as storedInDatastore } from './open.js';
import { storedOwnTrustDomains } from './sqlite.js';

/**
 * Throws TrustDomainMismatchError when the data dir's own bundle (which the CA writes with its first
 * key, and which thus records the trust domain) is of another trust domain than `trustDomain`.
 */
export function checkDataDirTrustDomain(dataDir: string, trustDomain: string): void {
  const other = storedOwnTrustDomains(dataDir).find((td) => td !== trustDomain);
  if (other !== undefined) throw new TrustDomainMismatchError(`data_dir ${dataDir}`, other, trustDomain);
}

/**
 * The same check on whichever datastore the configuration names; for PostgreSQL this also shows
 * that the database can be reached with the configured credentials and TLS.
 */
export async function checkDatastoreTrustDomain(config: ServerConfig): Promise<void> {
  if (config.datastore.type === 'sqlite') {
    checkDataDirTrustDomain(config.data_dir, config.trust_domain);
    return;
  }
  const other = (await storedInDatastore(config)).find((td) => td !== config.trust_domain);
  if (other !== undefined)
    throw new TrustDomainMismatchError(datastoreLocation(config), other, config.trust_domain, 'database');
}
