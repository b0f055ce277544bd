/**
 * Turns an entry as a client sent it into one the datastore may keep, or throws the named error
 * for the first thing wrong with it.
 *
 * @module
 */

import type { EntryMessage, SelectorMessage } from '../admin/messages.js';
import { SVID_TTL_MAX_SECONDS } from '../config/defaults.js';
import type { NewEntry, Selector } from '../datastore/datastore.js';
import { InvalidArgumentError, SelectorMalformedError, TtlOutOfRangeError } from '../errors.js';
import { checkIdInTrustDomain, checkIssuableId, isTrustDomainName } from './ids.js';

const DNS_NAME =
  /^(?=.{1,253}$)(\*\.)?([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$/;
const MAX_HINT = 1024;

/** Parses `type:value` as written on the command line; the value may itself contain colons. */
export function parseSelector(text: string): Selector {
  const colon = text.indexOf(':');
  if (colon <= 0 || colon === text.length - 1) throw new SelectorMalformedError(text);
  return { type: text.slice(0, colon), value: text.slice(colon + 1) };
}

export function checkSelector(selector: SelectorMessage): Selector {
  if (selector.type === '' || selector.value === '' || selector.type.includes(':')) {
    throw new SelectorMalformedError(`${selector.type}:${selector.value}`);
  }
  return { type: selector.type, value: selector.value };
}

/** A selector given twice is a typo (uid where gid was meant, say); the store keeps each once. */
function checkSelectorsDistinct(selectors: readonly Selector[]): void {
  const seen = new Set<string>();
  for (const { type, value } of selectors) {
    const text = `${type}:${value}`;
    if (seen.has(text))
      throw new InvalidArgumentError(
        `selector ${JSON.stringify(text)} is given twice; give each selector once (an entry matches a workload with all of them)`,
      );
    seen.add(text);
  }
}

function checkTtl(field: string, value: number): number {
  if (!Number.isInteger(value) || value < 0 || value > SVID_TTL_MAX_SECONDS) {
    throw new TtlOutOfRangeError(field, value, 0, SVID_TTL_MAX_SECONDS);
  }
  return value;
}

export function checkEntry(message: EntryMessage, trustDomain: string): NewEntry {
  const spiffeId = checkIssuableId('spiffe_id', message.spiffe_id, trustDomain);
  const parentId = checkIdInTrustDomain('parent_id', message.parent_id, trustDomain);
  if (spiffeId === parentId) {
    throw new InvalidArgumentError(
      `spiffe_id and parent_id are both ${spiffeId}; an entry cannot be its own parent`,
    );
  }
  if (message.selectors.length === 0) {
    throw new InvalidArgumentError('an entry needs at least one selector (type:value), e.g. unix:uid:1000');
  }
  const selectors = message.selectors.map(checkSelector);
  checkSelectorsDistinct(selectors);
  for (const name of message.dns_names) {
    if (!DNS_NAME.test(name))
      throw new InvalidArgumentError(`dns_names: ${JSON.stringify(name)} is not a DNS name`);
  }
  for (const td of message.federates_with) {
    if (!isTrustDomainName(td)) {
      throw new InvalidArgumentError(
        `federates_with: ${JSON.stringify(td)} is not a trust domain name (lowercase letters, digits, ".", "-", "_")`,
      );
    }
    if (td === trustDomain) {
      throw new InvalidArgumentError(
        `federates_with: ${td} is this server's own trust domain; list only foreign ones`,
      );
    }
  }
  if (message.hint.length > MAX_HINT)
    throw new InvalidArgumentError(`hint is longer than ${MAX_HINT} characters`);
  if (!Number.isInteger(message.expires_at) || message.expires_at < 0) {
    throw new InvalidArgumentError(`expires_at ${message.expires_at} must be Unix seconds, or 0 for never`);
  }
  return {
    spiffeId,
    parentId,
    selectors,
    x509SvidTtl: checkTtl('x509_svid_ttl', message.x509_svid_ttl),
    jwtSvidTtl: checkTtl('jwt_svid_ttl', message.jwt_svid_ttl),
    dnsNames: [...message.dns_names],
    admin: message.admin,
    downstream: message.downstream,
    federatesWith: [...new Set(message.federates_with)],
    hint: message.hint,
    expiresAt: message.expires_at,
  };
}
