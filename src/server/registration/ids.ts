/**
 * The admin API's checks on SPIFFE IDs and trust-domain names, on top of the spiffe library's
 * parser: errors name the field, IDs must have a path, belong to this server and be short enough
 * to sign, and IDs given to workloads stay out of the paths the server hands out itself.
 *
 * @module
 */
import { checkProducible } from '../../spiffe/id-syntax.js';
import { isSpiffeError, SpiffeId, TrustDomain } from '../../spiffe/index.js';
import { SpiffeIdInvalidError, SpiffeIdOutsideTrustDomainError, SpiffeIdReservedError } from '../errors.js';

export function isTrustDomainName(text: string): boolean {
  try {
    // TrustDomain.parse also accepts a whole SPIFFE ID; a bare name must come back unchanged.
    return TrustDomain.parse(text).name === text;
  } catch (error) {
    if (isSpiffeError(error)) return false;
    throw error;
  }
}

/**
 * Checks an ID an admin call looks something up by (an agent, a filter): valid SPIFFE ID text of at
 * most 2048 bytes, which no stored ID can exceed; returns it unchanged. A bad one is refused by the
 * rule it breaks instead of being answered with "not found" or nothing.
 */
export function checkLookupId(field: string, value: string): string {
  try {
    SpiffeId.parse(value);
    checkProducible(value, 'no stored ID is that long');
  } catch (error) {
    if (isSpiffeError(error)) throw new SpiffeIdInvalidError(field, value, error.message, error.code);
    throw error;
  }
  return value;
}

/**
 * Checks `value` is a SPIFFE ID with a path, in `trustDomain`, that the CA may sign (SPIFFE-ID §2.3:
 * at most 2048 bytes; the parser accepts longer ones, signing would fail later); returns it
 * unchanged.
 */
export function checkIdInTrustDomain(field: string, value: string, trustDomain: string): string {
  let id: SpiffeId;
  try {
    id = SpiffeId.parse(value);
    checkProducible(value, 'the CA signs no such ID');
  } catch (error) {
    if (isSpiffeError(error)) throw new SpiffeIdInvalidError(field, value, error.message, error.code);
    throw error;
  }
  if (id.isTrustDomainId) {
    throw new SpiffeIdInvalidError(field, value, 'it needs a path, e.g. spiffe://example.org/workload');
  }
  if (id.trustDomain.name !== trustDomain)
    throw new SpiffeIdOutsideTrustDomainError(field, value, trustDomain);
  return id.toString();
}

/**
 * Path prefixes the server hands out itself: agents are named under /agent by attestation, the
 * server under /ironroot. An ID an operator gives to a workload or a node must not collide with
 * either, or its holder could act as another agent, or serve the agent API as the server.
 */
const RESERVED_PATHS: readonly { prefix: string; owner: string }[] = [
  { prefix: '/agent', owner: 'agents named by attestation' },
  { prefix: '/ironroot', owner: 'the server itself' },
];

/**
 * The one rule for every ID the admin API is asked to issue (entry spiffe_id, join-token alias,
 * minted X.509- and JWT-SVIDs): checkIdInTrustDomain, and nothing under /agent or /ironroot.
 */
export function checkIssuableId(field: string, value: string, trustDomain: string): string {
  const checked = checkIdInTrustDomain(field, value, trustDomain);
  const path = SpiffeId.parse(checked).path;
  for (const { prefix, owner } of RESERVED_PATHS) {
    if (path === prefix || path.startsWith(`${prefix}/`))
      throw new SpiffeIdReservedError(field, value, owner);
  }
  return checked;
}
