import { createPrivateKey, type KeyObject, type X509Certificate } from 'node:crypto';
import { concatDer, decodeCertificate, parseDerCertificates, pemBlocks, toPem } from './der.js';
import { SpiffeError } from './errors.js';
import type { SpiffeId } from './spiffe-id.js';
import { checkLeaf, checkSigning, inspect } from './x509-inspect.js';

/**
 * A workload's own X.509-SVID: its SPIFFE ID, its certificate chain (leaf first) and its private key,
 * as the Workload API delivers them (`x509_svid`, `x509_svid_key`).
 */
export class X509Svid {
  /** The SVID's SPIFFE ID. */
  readonly id: SpiffeId;
  /** Leaf first, then intermediates. */
  readonly certificates: readonly X509Certificate[];
  /** The leaf's private key. */
  readonly privateKey: KeyObject;

  private constructor(id: SpiffeId, certificates: readonly X509Certificate[], privateKey: KeyObject) {
    this.id = id;
    this.certificates = certificates;
    this.privateKey = privateKey;
  }

  /**
   * Checks and wraps a chain and key: the leaf rules (one URI SAN with a non-root SPIFFE ID, `cA=false`,
   * keyUsage, EKU), every following certificate is a signing certificate that signed the one before,
   * and the private key belongs to the leaf. Validity dates and trust are not checked here: that is
   * {@link verifyX509Svid}'s job for peers.
   *
   * @throws SpiffeError `ERR_X509SVID_*`, e.g. `ERR_X509SVID_KEY_MISMATCH`.
   */
  static fromParts(certificates: readonly X509Certificate[], privateKey: KeyObject): X509Svid {
    const [leafCert, ...rest] = certificates;
    if (leafCert === undefined) {
      throw new SpiffeError(
        'ERR_X509SVID_NO_CERTIFICATES',
        'X.509-SVID has no certificates; expected leaf first',
      );
    }
    const id = checkLeaf(inspect(leafCert, 'leaf'));
    let below = leafCert;
    rest.forEach((cert, i) => {
      checkSigning(inspect(cert, `intermediate ${i + 1}`));
      if (!below.checkIssued(cert) || !below.verify(cert.publicKey)) {
        throw new SpiffeError(
          'ERR_X509SVID_BAD_SIGNATURE',
          `certificate ${i} of the X.509-SVID chain is not signed by certificate ${i + 1}; order the chain leaf first, each followed by its issuer`,
        );
      }
      below = cert;
    });
    if (privateKey.type !== 'private') {
      throw new SpiffeError('ERR_X509SVID_BAD_PRIVATE_KEY', 'X.509-SVID key is not a private key');
    }
    const fromKey = privateKey.export({ format: 'jwk' });
    const fromCert = leafCert.publicKey.export({ format: 'jwk' });
    const same = ['kty', 'crv', 'x', 'y', 'n', 'e'] as const;
    if (!same.every((k) => fromKey[k] === fromCert[k])) {
      throw new SpiffeError(
        'ERR_X509SVID_KEY_MISMATCH',
        "X.509-SVID private key does not match the leaf certificate's public key; pair the leaf with its own key",
      );
    }
    return new X509Svid(id, [...certificates], privateKey);
  }

  /**
   * Parses the Workload API form: concatenated DER certificates and an unencrypted DER PKCS#8 key.
   *
   * @throws SpiffeError `ERR_X509SVID_PARSE`, `ERR_X509SVID_BAD_PRIVATE_KEY`, or any rule of {@link fromParts}.
   */
  static parseDer(certificates: Uint8Array, pkcs8Key: Uint8Array): X509Svid {
    const certs = parseDerCertificates(certificates);
    if (certs === undefined) {
      throw new SpiffeError(
        'ERR_X509SVID_PARSE',
        'X.509-SVID certificates are not concatenated DER (the Workload API sends DER, not PEM)',
      );
    }
    return X509Svid.fromParts(
      certs,
      loadKey(() => createPrivateKey({ key: Buffer.from(pkcs8Key), format: 'der', type: 'pkcs8' })),
    );
  }

  /**
   * Parses PEM: `CERTIFICATE` blocks (leaf first) and a PKCS#8 `PRIVATE KEY` (or SEC1/PKCS#1) block.
   *
   * @throws SpiffeError `ERR_X509SVID_PARSE`, `ERR_X509SVID_BAD_PRIVATE_KEY`, or any rule of {@link fromParts}.
   */
  static parsePem(certificatesPem: string, keyPem: string): X509Svid {
    let certs: X509Certificate[];
    try {
      certs = pemBlocks(certificatesPem)
        .filter((b) => b.label === 'CERTIFICATE')
        .map((b) => decodeCertificate(b.der));
    } catch (err) {
      throw new SpiffeError(
        'ERR_X509SVID_PARSE',
        'X.509-SVID PEM holds a CERTIFICATE block that is not a certificate',
        {
          cause: err,
        },
      );
    }
    return X509Svid.fromParts(
      certs,
      loadKey(() => createPrivateKey(keyPem)),
    );
  }

  /** The Workload API form: concatenated DER chain and DER PKCS#8 key (W-19, W-20). */
  marshalDer(): { certificates: Uint8Array; privateKey: Uint8Array } {
    return {
      certificates: concatDer(this.certificates.map((c) => c.raw)),
      privateKey: this.privateKey.export({ type: 'pkcs8', format: 'der' }),
    };
  }

  /** PEM chain (leaf first) and PKCS#8 PEM key. */
  marshalPem(): { certificates: string; privateKey: string } {
    return {
      certificates: this.certificates.map((c) => toPem('CERTIFICATE', c.raw)).join(''),
      privateKey: this.privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
    };
  }
}

function loadKey(load: () => KeyObject): KeyObject {
  try {
    return load();
  } catch (err) {
    throw new SpiffeError(
      'ERR_X509SVID_BAD_PRIVATE_KEY',
      'X.509-SVID private key cannot be read; expected unencrypted PKCS#8',
      {
        cause: err,
      },
    );
  }
}
