/**
 * The registration API's checks on SPIFFE IDs and trust-domain names, on top of the spiffe
 * library's parser: errors name the field, and IDs must have a path and belong to this server.
 *
 * @module
 */
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

/** Checks `value` is a SPIFFE ID with a path, in `trustDomain`; returns it unchanged. */
export function checkIdInTrustDomain(field: string, value: string, trustDomain: string): string {
  let id: SpiffeId;
  try {
    id = SpiffeId.parse(value);
  } catch (error) {
    if (isSpiffeError(error)) throw new SpiffeIdInvalidError(field, value, error.message);
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
 * server under /ironroot. An ID given to a node by an operator must not collide with either, or a
 * join token could make its agent impersonate another agent or the server.
 */
const RESERVED_PATHS: readonly { prefix: string; owner: string }[] = [
  { prefix: '/agent', owner: 'agents named by attestation' },
  { prefix: '/ironroot', owner: 'the server itself' },
];

/** Like checkIdInTrustDomain, and refuses IDs under the reserved /agent and /ironroot paths. */
export function checkNodeAliasId(field: string, value: string, trustDomain: string): string {
  const checked = checkIdInTrustDomain(field, value, trustDomain);
  const path = SpiffeId.parse(checked).path;
  for (const { prefix, owner } of RESERVED_PATHS) {
    if (path === prefix || path.startsWith(`${prefix}/`))
      throw new SpiffeIdReservedError(field, value, owner);
  }
  return checked;
}
