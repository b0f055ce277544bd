import type { X509Certificate } from 'node:crypto';
import { concatDer, decodeCertificate, parseDerCertificates, pemBlocks, toPem } from '../der.js';
import { SpiffeError } from '../errors.js';
import type { TrustDomain } from '../trust-domain.js';
import { weakKeyReason } from './jwk.js';

/**
 * The X.509 authorities (root CA certificates) of one trust domain. A bundle always carries its
 * trust domain, because a validator must pick roots by the SVID's trust domain and bundles
 * of different trust domains are never merged (F-8). An empty bundle means the trust domain has
 * revoked its keys: nothing from it validates (B-10).
 */
export class X509Bundle {
  /** The trust domain these authorities sign for. */
  readonly trustDomain: TrustDomain;
  /** The authorities, in the order given. */
  readonly authorities: readonly X509Certificate[];

  /**
   * A bundle of `authorities` for `trustDomain` (copied; later changes to the array do not leak in).
   *
   * @throws SpiffeError `ERR_BUNDLE_WEAK_KEY` for an authority with an RSA key of fewer than
   *   2048 bits.
   */
  constructor(trustDomain: TrustDomain, authorities: readonly X509Certificate[]) {
    for (const [index, authority] of authorities.entries()) {
      const weak = weakKeyReason(authority.publicKey);
      if (weak !== undefined) {
        throw new SpiffeError(
          'ERR_BUNDLE_WEAK_KEY',
          `X.509 bundle for "${trustDomain}": authority ${index} (${authority.subject.replaceAll('\n', ', ')}) has ${weak}; the bundle is refused until that authority is replaced`,
        );
      }
    }
    this.trustDomain = trustDomain;
    this.authorities = [...authorities];
  }

  /**
   * Parses PEM text holding `CERTIFICATE` blocks (other block types are skipped). Empty text is an
   * empty bundle.
   *
   * @throws SpiffeError `ERR_BUNDLE_BAD_CERTIFICATE` when a block is not a certificate (or its
   *   public key does not decode), and
   *   `ERR_BUNDLE_PARSE` for text with no complete certificate block.
   */
  static parsePem(trustDomain: TrustDomain, pem: string): X509Bundle {
    const certs = pemBlocks(pem)
      .filter((b) => b.label === 'CERTIFICATE')
      .map((b, i) => {
        try {
          return decodeCertificate(b.der);
        } catch (err) {
          throw new SpiffeError(
            'ERR_BUNDLE_BAD_CERTIFICATE',
            `X.509 bundle for "${trustDomain}": PEM block ${i} is not a DER certificate with a usable public key; fix or remove it`,
            { cause: err },
          );
        }
      });
    if (certs.length === 0 && pem.trim() !== '') {
      throw new SpiffeError(
        'ERR_BUNDLE_PARSE',
        `X.509 bundle for "${trustDomain}" has text but no complete CERTIFICATE PEM block; check the file`,
      );
    }
    return new X509Bundle(trustDomain, certs);
  }

  /**
   * Parses concatenated DER certificates, the Workload API form (`bundle`, `federated_bundles`).
   *
   * @throws SpiffeError `ERR_BUNDLE_BAD_CERTIFICATE` when the bytes are not DER certificates.
   */
  static parseDer(trustDomain: TrustDomain, der: Uint8Array): X509Bundle {
    const certs = parseDerCertificates(der);
    if (certs === undefined) {
      throw new SpiffeError(
        'ERR_BUNDLE_BAD_CERTIFICATE',
        `X.509 bundle for "${trustDomain}" is not a sequence of DER certificates with usable public keys (the Workload API sends DER, not PEM)`,
      );
    }
    return new X509Bundle(trustDomain, certs);
  }

  /** PEM text, one `CERTIFICATE` block per authority. */
  marshalPem(): string {
    return this.authorities.map((c) => toPem('CERTIFICATE', c.raw)).join('');
  }

  /** Concatenated DER, the Workload API form. */
  marshalDer(): Uint8Array {
    return concatDer(this.authorities.map((c) => c.raw));
  }

  /** True when `cert` (compared by its DER) is one of the authorities. */
  hasAuthority(cert: X509Certificate): boolean {
    return this.authorities.some((a) => a.raw.equals(cert.raw));
  }
}
