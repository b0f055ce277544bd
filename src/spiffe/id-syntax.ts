import { SpiffeError } from './errors.js';

// Character rules of SPIFFE-ID §2.1 and §2.2. Checked by code unit: every allowed character is
// ASCII, so a string that passes has as many bytes as characters.
const TRUST_DOMAIN_CHAR = /^[a-z0-9._-]$/;
const PATH_CHAR = /^[a-zA-Z0-9._-]$/;

/** Longest trust domain name, in bytes (SPIFFE-ID §2.3). */
export const MAX_TRUST_DOMAIN_BYTES = 255;
/** Longest SPIFFE ID this library produces, in bytes (SPIFFE-ID §2.3); longer ones are still parsed. */
export const MAX_SPIFFE_ID_BYTES = 2048;

/** The literal prefix of every SPIFFE ID. */
export const SCHEME_PREFIX = 'spiffe://';

/** Throws the SpiffeError naming the first SPIFFE-ID §2.1 rule `name` breaks. */
export function checkTrustDomainName(name: string): void {
  if (name === '') {
    throw new SpiffeError(
      'ERR_TRUSTDOMAIN_EMPTY',
      'trust domain name is empty; SPIFFE-ID §2.1 requires a non-empty name such as "example.org"',
    );
  }
  for (const ch of name) {
    if (TRUST_DOMAIN_CHAR.test(ch)) continue;
    if (ch === '%') {
      throw new SpiffeError(
        'ERR_TRUSTDOMAIN_PERCENT_ENCODED',
        `trust domain name "${name}" contains a percent-encoded octet; SPIFFE-ID §2.1 forbids percent-encoding in the trust domain`,
      );
    }
    if (ch >= 'A' && ch <= 'Z') {
      throw new SpiffeError(
        'ERR_TRUSTDOMAIN_UPPERCASE',
        `trust domain name "${name}" contains an uppercase letter; SPIFFE-ID §2.1 requires lowercase: use "${name.toLowerCase()}"`,
      );
    }
    throw new SpiffeError(
      'ERR_TRUSTDOMAIN_BAD_CHAR',
      `trust domain name "${name}" contains the character ${JSON.stringify(ch)}; SPIFFE-ID §2.1 allows only lowercase letters, digits, ".", "-" and "_"`,
    );
  }
  if (name.length > MAX_TRUST_DOMAIN_BYTES) {
    throw new SpiffeError(
      'ERR_TRUSTDOMAIN_TOO_LONG',
      `trust domain name is ${name.length} bytes; SPIFFE-ID §2.3 limits it to ${MAX_TRUST_DOMAIN_BYTES} bytes`,
    );
  }
}

/** Checks one path segment (without slashes) against SPIFFE-ID §2.2. */
export function checkSegment(segment: string, context: string): void {
  if (segment === '') {
    throw new SpiffeError(
      'ERR_SPIFFEID_EMPTY_SEGMENT',
      `${context} has an empty path segment; SPIFFE-ID §2.2 forbids empty segments ("//"): remove the extra slash`,
    );
  }
  if (segment === '.' || segment === '..') {
    throw new SpiffeError(
      'ERR_SPIFFEID_DOT_SEGMENT',
      `${context} has the dot segment "${segment}"; SPIFFE-ID §2.2 forbids "." and ".." segments: use the resolved path`,
    );
  }
  for (const ch of segment) {
    if (PATH_CHAR.test(ch)) continue;
    if (ch === '%') {
      throw new SpiffeError(
        'ERR_SPIFFEID_PERCENT_ENCODED',
        `${context} has a percent-encoded octet in its path; SPIFFE-ID §2.2 forbids percent-encoding`,
      );
    }
    throw new SpiffeError(
      'ERR_SPIFFEID_BAD_PATH_CHAR',
      `${context} has the character ${JSON.stringify(ch)} in its path; SPIFFE-ID §2.2 allows only letters, digits, ".", "-" and "_" in a segment`,
    );
  }
}

/** Checks a whole path ("" or "/a/b") against SPIFFE-ID §2.2. */
export function checkPath(path: string, context: string): void {
  if (path === '') return;
  if (!path.startsWith('/')) {
    throw new SpiffeError(
      'ERR_SPIFFEID_PATH_NOT_ABSOLUTE',
      `${context}: path "${path}" does not start with "/"; a SPIFFE ID path is empty or begins with "/"`,
    );
  }
  const segments = path.slice(1).split('/');
  segments.forEach((segment, index) => {
    if (segment === '' && index === segments.length - 1) {
      throw new SpiffeError(
        'ERR_SPIFFEID_TRAILING_SLASH',
        `${context} ends with "/"; SPIFFE-ID §2.2 forbids a trailing slash: remove it`,
      );
    }
    checkSegment(segment, context);
  });
}

/**
 * Refuses to produce (issue, sign, request) an ID over 2048 bytes: SPIFFE-ID §2.3 says not to,
 * although parsers must accept them.
 */
export function checkProducible(idText: string, what: string): void {
  if (idText.length > MAX_SPIFFE_ID_BYTES) {
    throw new SpiffeError(
      'ERR_SPIFFEID_TOO_LONG',
      `${what}: the SPIFFE ID is ${idText.length} bytes; SPIFFE-ID §2.3 says not to produce IDs over ${MAX_SPIFFE_ID_BYTES} bytes: shorten the path`,
    );
  }
}

/** Splits and checks the text of a SPIFFE ID; returns its trust domain name and path. */
export function parseIdText(text: string): { trustDomain: string; path: string } {
  if (text === '') {
    throw new SpiffeError(
      'ERR_SPIFFEID_EMPTY',
      'SPIFFE ID is empty; expected "spiffe://<trust-domain>/<path>"',
    );
  }
  const context = `SPIFFE ID "${text.length > 200 ? `${text.slice(0, 200)}…` : text}"`;
  // Only the lowercase scheme is accepted, as go-spiffe does: SPIFFE-ID §2.4 calls the scheme
  // case-insensitive, but every widely used validator compares the literal prefix, and an ID that
  // one peer accepts and another rejects is worse than a strict parser.
  if (!text.startsWith(SCHEME_PREFIX)) {
    throw new SpiffeError(
      'ERR_SPIFFEID_WRONG_SCHEME',
      `${context} does not start with "spiffe://"; SPIFFE-ID §2 requires the scheme "spiffe" (lowercase)`,
    );
  }
  const rest = text.slice(SCHEME_PREFIX.length);
  const query = rest.indexOf('?');
  const fragment = rest.indexOf('#');
  if (query !== -1 && (fragment === -1 || query < fragment)) {
    throw new SpiffeError(
      'ERR_SPIFFEID_QUERY',
      `${context} has a query component; SPIFFE-ID §2 forbids "?…" in a SPIFFE ID`,
    );
  }
  if (fragment !== -1) {
    throw new SpiffeError(
      'ERR_SPIFFEID_FRAGMENT',
      `${context} has a fragment component; SPIFFE-ID §2 forbids "#…" in a SPIFFE ID`,
    );
  }
  const slash = rest.indexOf('/');
  const authority = slash === -1 ? rest : rest.slice(0, slash);
  const path = slash === -1 ? '' : rest.slice(slash);
  if (authority === '') {
    throw new SpiffeError(
      'ERR_SPIFFEID_MISSING_TRUST_DOMAIN',
      `${context} has no trust domain; SPIFFE-ID §2 requires a non-empty trust domain after "spiffe://"`,
    );
  }
  if (authority.includes('@')) {
    throw new SpiffeError(
      'ERR_SPIFFEID_USERINFO',
      `${context} has userinfo ("user@") in its authority; SPIFFE-ID §2.1 forbids it`,
    );
  }
  if (authority.includes(':') && !authority.startsWith('[')) {
    throw new SpiffeError(
      'ERR_SPIFFEID_PORT',
      `${context} has a port in its authority; SPIFFE-ID §2.1 forbids a port in the trust domain`,
    );
  }
  checkTrustDomainName(authority);
  checkPath(path, context);
  return { trustDomain: authority, path };
}
