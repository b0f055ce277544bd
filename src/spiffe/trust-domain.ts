import { checkTrustDomainName, parseIdText, SCHEME_PREFIX } from './id-syntax.js';

/**
 * A SPIFFE trust domain name (SPIFFE-ID §2.1), validated. Instances are immutable and compare by
 * name with {@link TrustDomain.equals}.
 *
 * @example
 * ```ts
 * const td = TrustDomain.parse('example.org');
 * TrustDomain.parse('spiffe://example.org/web').equals(td); // true
 * td.idString(); // 'spiffe://example.org'
 * ```
 */
export class TrustDomain {
  /** The trust domain name, e.g. `example.org`. */
  readonly name: string;

  private constructor(name: string) {
    this.name = name;
  }

  /**
   * Parses a bare trust domain name (`example.org`) or takes the trust domain of a SPIFFE ID
   * (`spiffe://example.org/x`), as bundle maps of the Workload API use both forms.
   *
   * @throws SpiffeError with an `ERR_TRUSTDOMAIN_*` code (or `ERR_SPIFFEID_*` for a bad ID).
   */
  static parse(text: string): TrustDomain {
    if (text.includes(':/')) return new TrustDomain(parseIdText(text).trustDomain);
    checkTrustDomainName(text);
    return new TrustDomain(text);
  }

  /** The trust domain's own SPIFFE ID text, `spiffe://<name>` (the key form of bundle maps). */
  idString(): string {
    return SCHEME_PREFIX + this.name;
  }

  /** True when both name the same trust domain. */
  equals(other: TrustDomain): boolean {
    return this.name === other.name;
  }

  /** The bare name. */
  toString(): string {
    return this.name;
  }

  /** The bare name, so JSON output holds the name. */
  toJSON(): string {
    return this.name;
  }
}
