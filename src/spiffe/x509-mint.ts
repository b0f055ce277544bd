import { type KeyObject, randomBytes, X509Certificate } from 'node:crypto';
import { signatureValue, signedDer } from './der-writer.js';
import { SpiffeError } from './errors.js';
import { checkProducible } from './id-syntax.js';
import * as px from './peculiar.js';
import type { Signer } from './signer.js';
import { signerWebCrypto, signingParams } from './signer-crypto.js';
import type { SpiffeId } from './spiffe-id.js';
import type { TrustDomain } from './trust-domain.js';
import { encodePermittedUriHosts, keyIdentifier, OID } from './x509-extensions.js';
import { svidTbs, verifiesTbs } from './x509-tbs.js';

/** A signing certificate and the key behind it, able to issue certificates. */
export interface X509Issuer {
  /** The issuing CA certificate; its subject becomes the new certificate's issuer. */
  readonly certificate: X509Certificate;
  /** Signs with the key of `certificate`. */
  readonly signer: Signer;
}

/** Validity and serial number shared by every certificate template. */
export interface CertificateValidity {
  /** Start of validity. */
  notBefore: Date;
  /** End of validity; must be after `notBefore`. */
  notAfter: Date;
  /** Serial number as hex; default: 16 random bytes. */
  serialNumber?: string;
}

/** What goes into a signing (CA) certificate. */
export interface X509CaTemplate extends CertificateValidity {
  /** The trust domain the CA signs for; its SPIFFE ID `spiffe://<td>` (no path, X-6) is the URI SAN. */
  trustDomain: TrustDomain;
  /** The CA's public key. For a self-signed CA it must be the signer's key. */
  publicKey: KeyObject;
  /** Subject DN (RFC 4514 text); default `O=SPIFFE, CN=<trust domain>` (a CA needs a non-empty subject). */
  subject?: string;
  /** `pathLenConstraint`; default: none. */
  pathLength?: number;
  /** When set, a critical URI nameConstraints permitting only these trust domains (X509-SVID §4.2). */
  permittedTrustDomains?: readonly TrustDomain[];
}

/** What goes into an X.509-SVID (leaf). */
export interface X509SvidTemplate extends CertificateValidity {
  /** The workload's SPIFFE ID; it must have a path. */
  spiffeId: SpiffeId;
  /** The workload's public key. */
  publicKey: KeyObject;
  /** Extra DNS SANs (allowed in any number, X509-SVID §2). */
  dnsNames?: readonly string[];
  /** Subject DN (RFC 4514 text); default empty, in which case the SAN is marked critical. */
  subject?: string;
}

/**
 * Issues a signing certificate: `cA=true`, critical keyUsage `keyCertSign | cRLSign` without
 * `digitalSignature` (X-14, X-16a), URI SAN `spiffe://<td>`, SKI/AKI, and optionally
 * `pathLenConstraint` and URI name constraints. Pass a bare {@link Signer} as `issuer` for a
 * self-signed root, or an {@link X509Issuer} for an intermediate.
 *
 * @example
 * ```ts
 * const root = await mintX509Ca({ trustDomain, publicKey: signer.publicKey, notBefore, notAfter }, signer);
 * ```
 */
export async function mintX509Ca(
  template: X509CaTemplate,
  issuer: X509Issuer | Signer,
): Promise<X509Certificate> {
  const selfSigned = !('certificate' in issuer);
  const signer = selfSigned ? issuer : issuer.signer;
  if (selfSigned && !template.publicKey.equals(signer.publicKey)) {
    throw new TypeError('a self-signed CA must be minted with the signer of its own public key');
  }
  const subject = template.subject ?? `O=SPIFFE, CN=${template.trustDomain.name}`;
  const extensions: px.Extension[] = [
    new px.BasicConstraintsExtension(true, template.pathLength, true),
    new px.KeyUsagesExtension(px.KeyUsageFlags.keyCertSign | px.KeyUsageFlags.cRLSign, true),
    new px.SubjectAlternativeNameExtension([{ type: 'url', value: template.trustDomain.idString() }], false),
    new px.SubjectKeyIdentifierExtension(keyIdentifier(template.publicKey)),
    new px.AuthorityKeyIdentifierExtension(
      selfSigned ? keyIdentifier(signer.publicKey) : authorityKeyId(issuer),
    ),
  ];
  if (template.permittedTrustDomains !== undefined) {
    const hosts = template.permittedTrustDomains.map((td) => td.name);
    extensions.push(new px.Extension(OID.nameConstraints, true, encodePermittedUriHosts(hosts)));
  }
  const issuerName = selfSigned ? new px.Name(subject) : subjectNameOf(issuer.certificate);
  return issue(template, subject, issuerName, extensions, signer);
}

/**
 * Issues an X.509-SVID: one URI SAN holding the SPIFFE ID, `cA=false`, critical keyUsage
 * `digitalSignature` only, EKU `serverAuth` + `clientAuth`, optional DNS
 * SANs, SKI/AKI. With no subject the SAN is critical. Encoded directly from a template kept
 * per issuer certificate (see x509-tbs.ts), signed through `issuer.signer`.
 *
 * @throws TypeError for a `serialNumber` that is not positive hex, a non-ASCII DNS name, or
 *   `notAfter` not after `notBefore`.
 * @throws SpiffeError `ERR_X509SVID_ROOT_PATH` for an ID without a path and
 *   `ERR_SPIFFEID_TOO_LONG` for an ID over 2048 bytes (ID-18).
 */
export async function mintX509Svid(template: X509SvidTemplate, issuer: X509Issuer): Promise<X509Certificate> {
  return new X509Certificate(await mintX509SvidDer(template, issuer));
}

/**
 * {@link mintX509Svid} returning the certificate's DER instead of a parsed `X509Certificate`, for
 * callers that only send the bytes on (parsing a new certificate costs more than encoding it). The
 * signature is checked all the same, over the TBS bytes with the signer's public key.
 *
 * @throws as {@link mintX509Svid}.
 */
export async function mintX509SvidDer(template: X509SvidTemplate, issuer: X509Issuer): Promise<Uint8Array> {
  const id = template.spiffeId;
  if (id.isTrustDomainId) {
    throw new SpiffeError(
      'ERR_X509SVID_ROOT_PATH',
      `cannot issue an X.509-SVID for "${id}": X509-SVID §3.1 requires a leaf SPIFFE ID with a path`,
    );
  }
  const idText = id.toString();
  checkProducible(idText, 'cannot issue an X.509-SVID');
  checkValidity(template);
  const tbs = svidTbs(
    {
      serialNumber: template.serialNumber ?? randomBytes(16).toString('hex'),
      notBefore: template.notBefore,
      notAfter: template.notAfter,
      subject: template.subject ?? '',
      publicKey: template.publicKey,
      spiffeId: idText,
      dnsNames: template.dnsNames ?? [],
    },
    issuer,
  );
  const signer = issuer.signer;
  const signature = signatureValue(signer.algorithm, await signer.sign(tbs));
  // A signer (HSM or otherwise) that returns a bad signature is caught here, not by the first peer.
  if (!(await verifiesTbs(tbs, signature, signer))) throw badSignature(signer);
  return signedDer(tbs, signer.algorithm, signature);
}

function checkValidity(template: CertificateValidity): void {
  if (!(template.notAfter.getTime() > template.notBefore.getTime())) {
    throw new TypeError('certificate notAfter must be later than notBefore');
  }
}

/** Parses a new certificate and checks its signature with the signer's public key. */
function selfChecked(der: Uint8Array, signer: Signer): X509Certificate {
  const cert = new X509Certificate(der);
  // A signer (HSM or otherwise) that returns a bad signature is caught here, not by the first peer.
  if (!cert.verify(signer.publicKey)) throw badSignature(signer);
  return cert;
}

function badSignature(signer: Signer): Error {
  return new Error(
    `signer (${signer.algorithm}) produced a certificate signature that its public key rejects`,
  );
}

async function issue(
  template: CertificateValidity & { publicKey: KeyObject },
  subject: string,
  issuerName: px.Name,
  extensions: px.Extension[],
  signer: Signer,
): Promise<X509Certificate> {
  checkValidity(template);
  const { crypto, key } = signerWebCrypto(signer);
  const generated = await px.X509CertificateGenerator.create(
    {
      serialNumber: template.serialNumber ?? randomBytes(16).toString('hex'),
      subject: new px.Name(subject),
      issuer: issuerName,
      notBefore: template.notBefore,
      notAfter: template.notAfter,
      publicKey: new Uint8Array(template.publicKey.export({ type: 'spki', format: 'der' })),
      signingKey: key,
      signingAlgorithm: signingParams(signer),
      extensions,
    },
    crypto,
  );
  return selfChecked(new Uint8Array(generated.rawData), signer);
}

/** What issuing needs from an issuer's certificate, read once per certificate object. */
interface IssuerFacts {
  /** Its subject as encoded, so the new certificate's issuer field matches byte for byte. */
  readonly subject: px.Name;
  /** Its subject key identifier, when it has one. */
  readonly keyId: string | undefined;
}

/**
 * @peculiar/x509's reading of each issuer certificate of a CA certificate, decoded once per
 * certificate object. Keyed weakly by the object, so a certificate nobody holds any more drops out
 * with it.
 */
const issuerFacts = new WeakMap<X509Certificate, IssuerFacts>();

function factsOf(cert: X509Certificate): IssuerFacts {
  let facts = issuerFacts.get(cert);
  if (facts === undefined) {
    const parsed = new px.X509Certificate(cert.raw);
    facts = {
      subject: parsed.subjectName,
      keyId: parsed.getExtension(px.SubjectKeyIdentifierExtension)?.keyId,
    };
    issuerFacts.set(cert, facts);
  }
  return facts;
}

/** The issuer's subject as encoded in its certificate, so the new issuer field matches byte for byte. */
function subjectNameOf(cert: X509Certificate): px.Name {
  return factsOf(cert).subject;
}

/**
 * The issuer's own subject key identifier when its certificate has one (it may have been made
 * elsewhere, with another method than ours), so AKI and SKI always match; otherwise computed.
 */
function authorityKeyId(issuer: X509Issuer): string {
  return factsOf(issuer.certificate).keyId ?? keyIdentifier(issuer.signer.publicKey);
}
