import { describe, expect, it } from 'vitest';
import { TrustDomain } from '../../src/spiffe/trust-domain.js';
import { expectSpiffeError } from '../helpers/spiffe-errors.js';

describe('TrustDomain.parse', () => {
  it('accepts a bare name', () => {
    const td = TrustDomain.parse('example.org');
    expect(td.name).toBe('example.org');
    expect(td.idString()).toBe('spiffe://example.org');
  });

  it('accepts a SPIFFE ID and takes its trust domain (both bundle-map key forms)', () => {
    expect(TrustDomain.parse('spiffe://example.org/web').equals(TrustDomain.parse('example.org'))).toBe(true);
    expect(TrustDomain.parse('spiffe://example.org').name).toBe('example.org');
  });

  it('accepts a 255-byte name and rejects 256 (ID-19)', () => {
    expect(TrustDomain.parse('a'.repeat(255)).name).toHaveLength(255);
    expectSpiffeError(() => TrustDomain.parse('a'.repeat(256)), 'ERR_TRUSTDOMAIN_TOO_LONG', /§2\.3 limits/);
  });

  it.each([
    ['', 'ERR_TRUSTDOMAIN_EMPTY', /§2\.1 requires a non-empty/],
    ['Example.org', 'ERR_TRUSTDOMAIN_UPPERCASE', /uppercase.*use "example.org"/],
    ['example.org:443', 'ERR_TRUSTDOMAIN_BAD_CHAR', /":"/],
    ['exa mple', 'ERR_TRUSTDOMAIN_BAD_CHAR', /§2\.1 allows only/],
    ['ex%41', 'ERR_TRUSTDOMAIN_PERCENT_ENCODED', /percent/],
  ] as const)('rejects bare name %j', (text, code, rule) => {
    expectSpiffeError(() => TrustDomain.parse(text), code, rule);
  });

  it('rejects a bad SPIFFE ID with the ID rule', () => {
    expectSpiffeError(
      () => TrustDomain.parse('spiffe://example.org/a/../b'),
      'ERR_SPIFFEID_DOT_SEGMENT',
      /dot/,
    );
    expectSpiffeError(() => TrustDomain.parse('http://example.org'), 'ERR_SPIFFEID_WRONG_SCHEME', /scheme/);
  });
});
