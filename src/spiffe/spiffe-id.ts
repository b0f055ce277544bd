import { checkPath, checkProducible, checkSegment, parseIdText, SCHEME_PREFIX } from './id-syntax.js';
import { TrustDomain } from './trust-domain.js';

/**
 * A SPIFFE ID (SPIFFE-ID §2), validated. Immutable; compare with {@link SpiffeId.equals}.
 *
 * Parsing accepts IDs of any length (SPIFFE-ID §2.3 requires handling at least 2048 bytes); the
 * builders refuse to produce IDs over 2048 bytes, which §2.3 says not to produce.
 *
 * @example
 * ```ts
 * const id = SpiffeId.parse('spiffe://example.org/ns/prod/sa/web');
 * id.trustDomain.name; // 'example.org'
 * id.path;             // '/ns/prod/sa/web'
 * SpiffeId.fromSegments(TrustDomain.parse('example.org'), 'ns', 'prod').toString();
 * ```
 */
export class SpiffeId {
  /** The trust domain the ID belongs to. */
  readonly trustDomain: TrustDomain;
  /** The path: `''` for a trust domain's own ID, otherwise `/seg/seg…`. */
  readonly path: string;

  private constructor(trustDomain: TrustDomain, path: string) {
    this.trustDomain = trustDomain;
    this.path = path;
  }

  /**
   * Parses and validates SPIFFE ID text.
   *
   * @throws SpiffeError whose code names the first rule broken (`ERR_SPIFFEID_WRONG_SCHEME`,
   *   `ERR_SPIFFEID_DOT_SEGMENT`, `ERR_TRUSTDOMAIN_BAD_CHAR`, …).
   */
  static parse(text: string): SpiffeId {
    const { trustDomain, path } = parseIdText(text);
    return new SpiffeId(TrustDomain.parse(trustDomain), path);
  }

  /**
   * Builds an ID from a trust domain and path segments (`'ns', 'prod'` gives `/ns/prod`). Each segment
   * is checked on its own, so a segment holding `/` is rejected instead of silently adding depth.
   *
   * @throws SpiffeError for a bad segment, or `ERR_SPIFFEID_TOO_LONG` past 2048 bytes.
   */
  static fromSegments(trustDomain: TrustDomain, ...segments: string[]): SpiffeId {
    const context = `SPIFFE ID in "${trustDomain.name}"`;
    for (const segment of segments) checkSegment(segment, context);
    return SpiffeId.produced(trustDomain, segments.map((s) => `/${s}`).join(''));
  }

  /**
   * Builds an ID from a trust domain and a whole path (`''` or `/a/b`).
   *
   * @throws SpiffeError for a bad path, or `ERR_SPIFFEID_TOO_LONG` past 2048 bytes.
   */
  static fromPath(trustDomain: TrustDomain, path: string): SpiffeId {
    checkPath(path, `SPIFFE ID in "${trustDomain.name}"`);
    return SpiffeId.produced(trustDomain, path);
  }

  private static produced(trustDomain: TrustDomain, path: string): SpiffeId {
    checkProducible(
      SCHEME_PREFIX + trustDomain.name + path,
      `cannot build a SPIFFE ID in "${trustDomain.name}"`,
    );
    return new SpiffeId(trustDomain, path);
  }

  /** True when the ID has no path, i.e. it names the trust domain itself (`spiffe://example.org`). */
  get isTrustDomainId(): boolean {
    return this.path === '';
  }

  /** The path split into segments (empty for a trust domain ID). */
  get segments(): string[] {
    return this.path === '' ? [] : this.path.slice(1).split('/');
  }

  /** True when the ID belongs to `trustDomain`. */
  memberOf(trustDomain: TrustDomain): boolean {
    return this.trustDomain.equals(trustDomain);
  }

  /** True when both IDs are the same. */
  equals(other: SpiffeId): boolean {
    return this.trustDomain.equals(other.trustDomain) && this.path === other.path;
  }

  /** The ID text, `spiffe://<trust-domain><path>`. */
  toString(): string {
    return SCHEME_PREFIX + this.trustDomain.name + this.path;
  }

  /** The ID text, so JSON output holds the ID. */
  toJSON(): string {
    return this.toString();
  }
}
