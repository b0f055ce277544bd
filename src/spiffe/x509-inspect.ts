import type { X509Certificate } from 'node:crypto';
import { SpiffeError, type SpiffeErrorCode } from './errors.js';
import * as px from './peculiar.js';
import { SpiffeId } from './spiffe-id.js';
import { decodeNameConstraints, type NameConstraints, OID } from './x509-extensions.js';

/** What SPIFFE validation needs to know about one certificate, read once. */
export interface CertFacts {
  readonly cert: X509Certificate;
  /** 'leaf' or the certificate's position label, for messages. */
  readonly label: string;
  readonly isCa: boolean | undefined;
  readonly pathLength: number | undefined;
  readonly keyUsage: number | undefined;
  readonly keyUsageCritical: boolean;
  readonly extKeyUsage: readonly string[] | undefined;
  readonly uris: readonly string[];
  readonly dnsNames: readonly string[];
  readonly sanCritical: boolean;
  readonly subjectEmpty: boolean;
  readonly nameConstraints: NameConstraints | undefined;
  readonly unknownCritical: readonly string[];
  readonly notBefore: Date;
  readonly notAfter: Date;
}

const KNOWN = new Set<string>(Object.values(OID));

/**
 * What {@link inspect} read from each certificate object. A bundle's roots are the same objects on
 * every verification; decoding them again with @peculiar/x509 each time was half the cost of
 * checking an agent's SVID. Weak, so a certificate nobody holds drops out; facts depend on the
 * bytes alone, which an X509Certificate never changes.
 */
const readFacts = new WeakMap<X509Certificate, Omit<CertFacts, 'label'>>();

/**
 * Reads the extensions SPIFFE rules talk about.
 *
 * @throws SpiffeError `ERR_X509SVID_PARSE` when an extension cannot be decoded.
 */
export function inspect(cert: X509Certificate, label: string): CertFacts {
  let facts = readFacts.get(cert);
  if (facts === undefined) {
    facts = read(cert, label);
    readFacts.set(cert, facts);
  }
  return { ...facts, label };
}

function read(cert: X509Certificate, label: string): Omit<CertFacts, 'label'> {
  try {
    const p = new px.X509Certificate(cert.raw);
    const bc = p.getExtension(px.BasicConstraintsExtension);
    const ku = p.getExtension(px.KeyUsagesExtension);
    const eku = p.getExtension(px.ExtendedKeyUsageExtension);
    const sans = p.getExtensions(px.SubjectAlternativeNameExtension);
    const names = sans.flatMap((s) => s.names.items);
    const nc = p.extensions.find((e) => e.type === OID.nameConstraints);
    const nameConstraints = nc === undefined ? undefined : decodeNameConstraints(new Uint8Array(nc.value));
    if (nc !== undefined && nameConstraints === undefined) throw new Error('malformed nameConstraints');
    return {
      cert,
      isCa: bc?.ca,
      pathLength: bc?.pathLength,
      keyUsage: ku?.usages,
      keyUsageCritical: ku?.critical ?? false,
      extKeyUsage: eku?.usages.map(String),
      uris: names.filter((n) => n.type === 'url').map((n) => n.value),
      dnsNames: names.filter((n) => n.type === 'dns').map((n) => n.value),
      sanCritical: sans.some((s) => s.critical),
      subjectEmpty: p.subjectName.toJSON().length === 0,
      nameConstraints,
      unknownCritical: p.extensions.filter((e) => e.critical && !KNOWN.has(e.type)).map((e) => e.type),
      notBefore: p.notBefore,
      notAfter: p.notAfter,
    };
  } catch (err) {
    if (err instanceof SpiffeError) throw err;
    throw new SpiffeError(
      'ERR_X509SVID_PARSE',
      `${label} certificate has an extension that cannot be decoded`,
      {
        cause: err,
      },
    );
  }
}

function fail(code: SpiffeErrorCode, message: string): never {
  throw new SpiffeError(code, message);
}

/**
 * The SPIFFE ID in a certificate's URI SAN, parsed; undefined when it has no URI SAN. More than
 * one URI SAN is rejected.
 */
export function spiffeIdOf(f: CertFacts): SpiffeId | undefined {
  if (f.uris.length > 1) {
    fail(
      'ERR_X509SVID_MULTIPLE_URI_SANS',
      `${f.label} certificate has ${f.uris.length} URI SANs; X509-SVID §2 requires exactly one (its SPIFFE ID)`,
    );
  }
  const uri = f.uris[0];
  return uri === undefined ? undefined : SpiffeId.parse(uri);
}

/** Checks the leaf rules of X509-SVID §3.1, §4 and §5.2; returns the leaf's SPIFFE ID. */
export function checkLeaf(f: CertFacts): SpiffeId {
  const id = spiffeIdOf(f);
  if (id === undefined) {
    fail(
      'ERR_X509SVID_NO_URI_SAN',
      `${f.label} certificate has no URI SAN; X509-SVID §2 requires exactly one URI SAN holding the SPIFFE ID`,
    );
  }
  if (id.isTrustDomainId) {
    fail(
      'ERR_X509SVID_ROOT_PATH',
      `leaf SPIFFE ID "${id}" has no path; X509-SVID §3.1 and §5.2 require a leaf ID with a non-root path`,
    );
  }
  if (f.subjectEmpty && !f.sanCritical) {
    fail(
      'ERR_X509SVID_SAN_NOT_CRITICAL',
      'leaf certificate has an empty subject but a non-critical SAN; X509-SVID §3.1 (RFC 5280 §4.1.2.6) requires it critical',
    );
  }
  if (f.isCa === true) {
    fail(
      'ERR_X509SVID_LEAF_IS_CA',
      'leaf certificate has cA=true; X509-SVID §4.1 and §5.2 require cA=false for leaves',
    );
  }
  checkKeyUsagePresent(f);
  const ku = f.keyUsage ?? 0;
  if (ku & px.KeyUsageFlags.keyCertSign) {
    fail(
      'ERR_X509SVID_LEAF_KEY_CERT_SIGN',
      'leaf certificate sets keyCertSign; X509-SVID §4.3 and §5.2 forbid it',
    );
  }
  if (ku & px.KeyUsageFlags.cRLSign) {
    fail('ERR_X509SVID_LEAF_CRL_SIGN', 'leaf certificate sets cRLSign; X509-SVID §4.3 and §5.2 forbid it');
  }
  if (!(ku & px.KeyUsageFlags.digitalSignature)) {
    fail(
      'ERR_X509SVID_LEAF_NO_DIGITAL_SIGNATURE',
      'leaf certificate does not set digitalSignature; X509-SVID §4.3 requires it for leaves',
    );
  }
  if (
    f.extKeyUsage !== undefined &&
    !(
      f.extKeyUsage.includes(px.ExtendedKeyUsage.serverAuth) &&
      f.extKeyUsage.includes(px.ExtendedKeyUsage.clientAuth)
    )
  ) {
    fail(
      'ERR_X509SVID_EKU_MISSING_AUTH',
      'leaf certificate has an extended key usage without both serverAuth and clientAuth; X509-SVID §4.4 requires both when EKU is present',
    );
  }
  return id;
}

/** Checks the signing-certificate rules of X509-SVID §3.2, §4.1 and §4.3. */
export function checkSigning(f: CertFacts): void {
  if (f.isCa !== true) {
    fail(
      'ERR_X509SVID_CA_NOT_CA',
      `${f.label} certificate signs others but lacks cA=true; X509-SVID §4.1 requires it`,
    );
  }
  checkKeyUsagePresent(f);
  if (!((f.keyUsage ?? 0) & px.KeyUsageFlags.keyCertSign)) {
    fail(
      'ERR_X509SVID_CA_NO_KEY_CERT_SIGN',
      `${f.label} certificate signs others but lacks keyCertSign; X509-SVID §4.3 requires it`,
    );
  }
  // X-5 makes a signing certificate's SPIFFE ID a SHOULD, so its absence is accepted.
  const id = spiffeIdOf(f);
  if (id !== undefined && !id.isTrustDomainId) {
    fail(
      'ERR_X509SVID_CA_ID_HAS_PATH',
      `${f.label} certificate's SPIFFE ID "${id}" has a path; X509-SVID §3.2 forbids a path in a signing certificate's ID`,
    );
  }
}

function checkKeyUsagePresent(f: CertFacts): void {
  if (f.keyUsage === undefined) {
    fail(
      'ERR_X509SVID_NO_KEY_USAGE',
      `${f.label} certificate has no keyUsage; X509-SVID §4.3 requires it on every SVID`,
    );
  }
  if (!f.keyUsageCritical) {
    fail(
      'ERR_X509SVID_KEY_USAGE_NOT_CRITICAL',
      `${f.label} certificate's keyUsage is not critical; X509-SVID §4.3 requires it critical`,
    );
  }
}
