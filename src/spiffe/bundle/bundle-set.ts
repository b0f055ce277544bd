import type { TrustDomain } from '../trust-domain.js';
import type { JwtBundle } from './jwt-bundle.js';
import { SpiffeBundle } from './spiffe-bundle.js';
import { X509Bundle } from './x509-bundle.js';

/** Where X.509-SVID validation finds roots: one bundle per trust domain, or none. */
export interface X509BundleSource {
  getX509BundleForTrustDomain(trustDomain: TrustDomain): X509Bundle | undefined;
}

/** Where JWT-SVID validation finds keys: one bundle per trust domain, or none (W-47). */
export interface JwtBundleSource {
  getJwtBundleForTrustDomain(trustDomain: TrustDomain): JwtBundle | undefined;
}

/**
 * SPIFFE bundles keyed by trust domain, never merged (F-8). Serves both sources, so a set of
 * federated bundles can validate X.509- and JWT-SVIDs alike.
 */
export class BundleSet implements X509BundleSource, JwtBundleSource {
  readonly #bundles = new Map<string, SpiffeBundle>();

  /** A set holding `bundles`; a later bundle of the same trust domain replaces an earlier one. */
  constructor(bundles: Iterable<SpiffeBundle | X509Bundle | JwtBundle> = []) {
    for (const b of bundles) this.set(b);
  }

  /**
   * Stores `bundle` as the bundle of its trust domain, replacing any earlier one. An X.509 or JWT
   * bundle becomes a SPIFFE bundle with only that part.
   */
  set(bundle: SpiffeBundle | X509Bundle | JwtBundle): void {
    const spiffe =
      bundle instanceof SpiffeBundle
        ? bundle
        : bundle instanceof X509Bundle
          ? new SpiffeBundle(bundle.trustDomain, { x509Authorities: bundle.authorities })
          : new SpiffeBundle(bundle.trustDomain, { jwtAuthorities: bundle.authorities });
    this.#bundles.set(spiffe.trustDomain.name, spiffe);
  }

  /** Removes the bundle of `trustDomain` (ending a federation relationship); true if there was one. */
  delete(trustDomain: TrustDomain): boolean {
    return this.#bundles.delete(trustDomain.name);
  }

  /** The SPIFFE bundle of `trustDomain`, if any. */
  get(trustDomain: TrustDomain): SpiffeBundle | undefined {
    return this.#bundles.get(trustDomain.name);
  }

  /** Every stored bundle. */
  bundles(): SpiffeBundle[] {
    return [...this.#bundles.values()];
  }

  /** The X.509 part of `trustDomain`'s bundle, if any. */
  getX509BundleForTrustDomain(trustDomain: TrustDomain): X509Bundle | undefined {
    return this.get(trustDomain)?.toX509Bundle();
  }

  /** The JWT part of `trustDomain`'s bundle, if any. */
  getJwtBundleForTrustDomain(trustDomain: TrustDomain): JwtBundle | undefined {
    return this.get(trustDomain)?.toJwtBundle();
  }
}
