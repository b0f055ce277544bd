/**
 * The checks the registration API needs on SPIFFE IDs and trust-domain names, with errors that
 * name the field. Syntax follows SPIFFE-ID.md §2: lowercase trust domain, path segments of
 * [A-Za-z0-9._-] that are neither empty, "." nor "..".
 *
 * @module
 */
import { SpiffeIdInvalidError, SpiffeIdOutsideTrustDomainError } from '../errors.js';

const TRUST_DOMAIN = /^[a-z0-9._-]+$/;
const SEGMENT = /^[A-Za-z0-9._-]+$/;
const MAX_ID_BYTES = 2048;

export function isTrustDomainName(text: string): boolean {
  return text.length > 0 && text.length <= 255 && TRUST_DOMAIN.test(text);
}

/** Checks `value` is a SPIFFE ID with a path, in `trustDomain`; returns it unchanged. */
export function checkIdInTrustDomain(field: string, value: string, trustDomain: string): string {
  if (!value.startsWith('spiffe://'))
    throw new SpiffeIdInvalidError(field, value, 'it must start with spiffe://');
  if (Buffer.byteLength(value) > MAX_ID_BYTES) {
    throw new SpiffeIdInvalidError(field, value, `it is longer than ${MAX_ID_BYTES} bytes`);
  }
  const rest = value.slice('spiffe://'.length);
  const slash = rest.indexOf('/');
  const domain = slash === -1 ? rest : rest.slice(0, slash);
  if (!isTrustDomainName(domain)) {
    throw new SpiffeIdInvalidError(
      field,
      value,
      'the trust domain may hold only lowercase letters, digits, ".", "-", "_"',
    );
  }
  if (slash === -1 || slash === rest.length - 1) {
    throw new SpiffeIdInvalidError(field, value, 'it needs a path, e.g. spiffe://example.org/workload');
  }
  for (const segment of rest.slice(slash + 1).split('/')) {
    if (segment === '' || segment === '.' || segment === '..' || !SEGMENT.test(segment)) {
      throw new SpiffeIdInvalidError(
        field,
        value,
        `path segment ${JSON.stringify(segment)} is not allowed (letters, digits, ".", "-", "_"; not empty, "." or "..")`,
      );
    }
  }
  if (domain !== trustDomain) throw new SpiffeIdOutsideTrustDomainError(field, value, trustDomain);
  return value;
}
