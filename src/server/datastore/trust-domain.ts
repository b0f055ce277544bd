/**
 * Which trust domain a data dir belongs to. A server started on it with another trust domain would
 * sign SVIDs of the new one under the old one's CA certificate and bundle, beside entries and agents
 * that name the old one; so it is refused before anything is opened for writing.
 *
 * @module
 */
import { TrustDomainMismatchError } from '../errors.js';
import { storedOwnTrustDomains } from './sqlite.js';

/**
 * Throws TrustDomainMismatchError when the data dir's own bundle (which the CA writes with its first
 * key, and which thus records the trust domain) is of another trust domain than `trustDomain`.
 */
export function checkDataDirTrustDomain(dataDir: string, trustDomain: string): void {
  const other = storedOwnTrustDomains(dataDir).find((td) => td !== trustDomain);
  if (other !== undefined) throw new TrustDomainMismatchError(dataDir, other, trustDomain);
}
