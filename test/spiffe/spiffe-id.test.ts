import { describe, expect, it } from 'vitest';
import type { SpiffeErrorCode } from '../../src/spiffe/errors.js';
import { matchAny, matchId, matchMemberOf, matchOneOf } from '../../src/spiffe/match.js';
import { SpiffeId } from '../../src/spiffe/spiffe-id.js';
import { TrustDomain } from '../../src/spiffe/trust-domain.js';
import { expectSpiffeError } from '../helpers/spiffe-errors.js';

const td = TrustDomain.parse('example.org');

describe('SpiffeId.parse accepts valid IDs', () => {
  it.each([
    ['spiffe://example.org', 'example.org', ''],
    ['spiffe://example.org/ns/prod/sa/web', 'example.org', '/ns/prod/sa/web'],
    ['spiffe://a-b_c.9/Path.With-Mixed_Case', 'a-b_c.9', '/Path.With-Mixed_Case'],
    ['spiffe://192.168.0.1/x', '192.168.0.1', '/x'], // ID-11: IPv4 fits the charset and is allowed
    ['spiffe://td/.a/..a/...', 'td', '/.a/..a/...'], // ID-14: only exact "." and ".." are dot segments
  ])('%s', (text, trustDomain, path) => {
    const id = SpiffeId.parse(text);
    expect(id.trustDomain.name).toBe(trustDomain);
    expect(id.path).toBe(path);
    expect(id.toString()).toBe(text);
  });

  it('accepts an ID of exactly 2048 bytes (ID-17)', () => {
    const prefix = 'spiffe://example.org/';
    const text = prefix + 'a'.repeat(2048 - prefix.length);
    expect(Buffer.byteLength(text)).toBe(2048);
    expect(SpiffeId.parse(text).toString()).toBe(text);
  });

  it('still parses a longer ID, since §2.3 only forbids producing one (ID-17/18)', () => {
    const text = `spiffe://example.org/${'a'.repeat(3000)}`;
    expect(SpiffeId.parse(text).path).toHaveLength(3001);
  });
});

describe('SpiffeId.parse rejects each rule with its own code', () => {
  const cases: [string, string, SpiffeErrorCode, RegExp][] = [
    ['empty', '', 'ERR_SPIFFEID_EMPTY', /empty/],
    ['wrong scheme (ID-1)', 'https://example.org/x', 'ERR_SPIFFEID_WRONG_SCHEME', /scheme "spiffe"/],
    ['uppercase scheme', 'SPIFFE://example.org/x', 'ERR_SPIFFEID_WRONG_SCHEME', /scheme "spiffe"/],
    ['no scheme', 'example.org/x', 'ERR_SPIFFEID_WRONG_SCHEME', /scheme "spiffe"/],
    [
      'missing trust domain (ID-2, ID-5)',
      'spiffe:///x',
      'ERR_SPIFFEID_MISSING_TRUST_DOMAIN',
      /no trust domain/,
    ],
    ['bare scheme', 'spiffe://', 'ERR_SPIFFEID_MISSING_TRUST_DOMAIN', /§2 requires a non-empty/],
    ['query (ID-3)', 'spiffe://example.org/x?a=b', 'ERR_SPIFFEID_QUERY', /§2 forbids "\?…"/],
    ['fragment (ID-4)', 'spiffe://example.org/x#f', 'ERR_SPIFFEID_FRAGMENT', /§2 forbids "#…"/],
    ['userinfo (ID-6)', 'spiffe://user@example.org/x', 'ERR_SPIFFEID_USERINFO', /userinfo.*§2\.1/],
    ['port (ID-7)', 'spiffe://example.org:8080/x', 'ERR_SPIFFEID_PORT', /port.*§2\.1/],
    [
      'uppercase trust domain (ID-8)',
      'spiffe://Example.org/x',
      'ERR_TRUSTDOMAIN_UPPERCASE',
      /§2\.1 requires lowercase/,
    ],
    [
      'bad trust-domain char (ID-9)',
      'spiffe://exa$mple.org/x',
      'ERR_TRUSTDOMAIN_BAD_CHAR',
      /§2\.1 allows only/,
    ],
    ['IPv6 host (ID-11)', 'spiffe://[::1]/x', 'ERR_TRUSTDOMAIN_BAD_CHAR', /"\["/],
    [
      'percent in trust domain (ID-10)',
      'spiffe://ex%41mple.org/x',
      'ERR_TRUSTDOMAIN_PERCENT_ENCODED',
      /percent/,
    ],
    [
      'percent in path (ID-12)',
      'spiffe://example.org/a%2Fb',
      'ERR_SPIFFEID_PERCENT_ENCODED',
      /§2\.2 forbids percent/,
    ],
    [
      'empty segment (ID-13)',
      'spiffe://example.org/a//b',
      'ERR_SPIFFEID_EMPTY_SEGMENT',
      /empty path segment/,
    ],
    ['dot segment (ID-14)', 'spiffe://example.org/a/./b', 'ERR_SPIFFEID_DOT_SEGMENT', /dot segment "\."/],
    [
      'dot-dot segment (ID-14)',
      'spiffe://example.org/a/..',
      'ERR_SPIFFEID_DOT_SEGMENT',
      /dot segment "\.\."/,
    ],
    ['trailing slash (ID-15)', 'spiffe://example.org/a/', 'ERR_SPIFFEID_TRAILING_SLASH', /trailing slash/],
    ['root slash only (ID-15)', 'spiffe://example.org/', 'ERR_SPIFFEID_TRAILING_SLASH', /trailing slash/],
    ['bad path char (ID-16)', 'spiffe://example.org/a b', 'ERR_SPIFFEID_BAD_PATH_CHAR', /§2\.2 allows only/],
    [
      'trust domain over 255 bytes (ID-19)',
      `spiffe://${'a'.repeat(256)}/x`,
      'ERR_TRUSTDOMAIN_TOO_LONG',
      /255 bytes/,
    ],
  ];
  it.each(cases)('%s', (_name, text, code, rule) => {
    expectSpiffeError(() => SpiffeId.parse(text), code, rule);
  });
});

describe('SpiffeId builders', () => {
  it('fromSegments joins checked segments', () => {
    expect(SpiffeId.fromSegments(td, 'ns', 'prod').toString()).toBe('spiffe://example.org/ns/prod');
    expect(SpiffeId.fromSegments(td).toString()).toBe('spiffe://example.org');
  });

  it('fromSegments rejects a segment holding a slash instead of adding depth', () => {
    expectSpiffeError(() => SpiffeId.fromSegments(td, 'a/b'), 'ERR_SPIFFEID_BAD_PATH_CHAR', /"\/"/);
  });

  it.each([
    ['', 'ERR_SPIFFEID_EMPTY_SEGMENT', /empty path segment/],
    ['..', 'ERR_SPIFFEID_DOT_SEGMENT', /dot segment/],
    ['a%20', 'ERR_SPIFFEID_PERCENT_ENCODED', /percent/],
  ] as const)('fromSegments rejects segment %j', (segment, code, rule) => {
    expectSpiffeError(() => SpiffeId.fromSegments(td, 'ok', segment), code, rule);
  });

  it('fromPath checks the whole path', () => {
    expect(SpiffeId.fromPath(td, '/a/b').path).toBe('/a/b');
    expectSpiffeError(
      () => SpiffeId.fromPath(td, 'a/b'),
      'ERR_SPIFFEID_PATH_NOT_ABSOLUTE',
      /start with "\/"/,
    );
    expectSpiffeError(() => SpiffeId.fromPath(td, '/a/'), 'ERR_SPIFFEID_TRAILING_SLASH', /trailing slash/);
  });

  it('refuses to produce an ID over 2048 bytes (ID-18) but produces one of exactly 2048', () => {
    const room = 2048 - 'spiffe://example.org/'.length;
    expect(SpiffeId.fromSegments(td, 'a'.repeat(room)).toString()).toHaveLength(2048);
    expectSpiffeError(
      () => SpiffeId.fromSegments(td, 'a'.repeat(room + 1)),
      'ERR_SPIFFEID_TOO_LONG',
      /§2\.3/,
    );
  });
});

describe('SpiffeId queries', () => {
  const id = SpiffeId.parse('spiffe://example.org/a/b');

  it('equality compares trust domain and path', () => {
    expect(id.equals(SpiffeId.parse('spiffe://example.org/a/b'))).toBe(true);
    expect(id.equals(SpiffeId.parse('spiffe://example.org/a/B'))).toBe(false); // paths are case-sensitive
    expect(id.equals(SpiffeId.parse('spiffe://example.com/a/b'))).toBe(false);
  });

  it('memberOf tests the trust domain', () => {
    expect(id.memberOf(td)).toBe(true);
    expect(id.memberOf(TrustDomain.parse('example.com'))).toBe(false);
  });

  it('exposes segments and whether it is a trust domain ID', () => {
    expect(id.segments).toEqual(['a', 'b']);
    expect(id.isTrustDomainId).toBe(false);
    expect(SpiffeId.parse('spiffe://example.org').isTrustDomainId).toBe(true);
    expect(JSON.stringify({ id })).toBe('{"id":"spiffe://example.org/a/b"}');
  });
});

describe('matchers', () => {
  const a = SpiffeId.parse('spiffe://example.org/a');
  const b = SpiffeId.parse('spiffe://example.org/b');
  const other = SpiffeId.parse('spiffe://other.org/a');

  it('matchAny accepts anything', () => {
    expect(() => matchAny()(other)).not.toThrow();
  });

  it('matchId accepts only the expected ID', () => {
    expect(() => matchId(a)(a)).not.toThrow();
    expectSpiffeError(() => matchId(a)(b), 'ERR_SPIFFEID_MISMATCH', /expected "spiffe:\/\/example.org\/a"/);
  });

  it('matchOneOf accepts any listed ID', () => {
    expect(() => matchOneOf(a, b)(b)).not.toThrow();
    expectSpiffeError(() => matchOneOf(a, b)(other), 'ERR_SPIFFEID_MISMATCH', /expected one of/);
  });

  it('matchMemberOf accepts the trust domain only', () => {
    expect(() => matchMemberOf(td)(b)).not.toThrow();
    expectSpiffeError(
      () => matchMemberOf(td)(other),
      'ERR_SPIFFEID_MISMATCH',
      /member of trust domain "example.org"/,
    );
  });
});
