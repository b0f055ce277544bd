/**
 * EK certificates: decoding what the agent read from NV, the TPM facts in the certificate's
 * subjectAltName, the match between certificate key and EK public area, the EK's stable hash, and
 * chain building to configured manufacturer roots.
 *
 * Two parsers on purpose: node:crypto's X509Certificate (OpenSSL) does signatures, validity and the
 * issuer-name match; a strict DER reading of the whole certificate (certificate-structure.ts) must
 * accept it too, so one either cannot read is refused. That reading also gives the extensions
 * node:crypto does not expose (critical flags, basicConstraints path length, the SAN's directoryName
 * attributes), decoded by ek-extensions.ts.
 *
 * @module
 */
import { createHash, type KeyObject, X509Certificate } from 'node:crypto';
import { unwrapCertificate } from '../agent/ek.js';
import type { TpmtPublic } from '../codec/public.js';
import { publicKeyFromArea } from '../codec/public-key.js';
import { readCertificateStructure } from './certificate-structure.js';
import { type CertificateExtensions, decodeExtensions } from './ek-extensions.js';
import { TpmVerifyError } from './errors.js';

const OID = {
  subjectDirectoryAttributes: '2.5.29.9',
  keyUsage: '2.5.29.15',
  subjectAltName: '2.5.29.17',
  basicConstraints: '2.5.29.19',
  certificatePolicies: '2.5.29.32',
  authorityKeyIdentifier: '2.5.29.35',
  extKeyUsage: '2.5.29.37',
  subjectKeyIdentifier: '2.5.29.14',
  anyExtendedKeyUsage: '2.5.29.37.0',
  tcgKpEkCertificate: '2.23.133.8.1',
  tpmManufacturer: '2.23.133.2.1',
  tpmModel: '2.23.133.2.2',
  tpmVersion: '2.23.133.2.3',
} as const;

/**
 * Critical extensions accepted. Generic path validation refuses EK certificates because the TCG EK
 * profile makes the SAN (a directoryName with TPM manufacturer, model and version) critical; this
 * module reads it. subjectDirectoryAttributes (the TPM specification and security assertions) and
 * certificatePolicies only inform: no decision here depends on them and no policy is required, so
 * they are accepted should a manufacturer mark them critical. The key identifiers are matched by
 * check_issued. Any other critical extension (name constraints, policy constraints, …) would need
 * processing this module does not do, so a certificate carrying one is refused.
 */
const HANDLED_CRITICAL: ReadonlySet<string> = new Set([
  OID.basicConstraints,
  OID.keyUsage,
  OID.extKeyUsage,
  OID.subjectAltName,
  OID.subjectDirectoryAttributes,
  OID.certificatePolicies,
  OID.authorityKeyIdentifier,
  OID.subjectKeyIdentifier,
]);

/** Longest chain accepted, leaf and anchor included; manufacturer chains have 2 to 4 certificates. */
export const MAX_CHAIN_LENGTH = 8;

/**
 * Most CA certificates taken from the agent besides its EK certificate. TPMs keep one to three
 * intermediates in NV (0x01c00100+); more belong in the server's EK trust store.
 */
export const MAX_PRESENTED_CERTIFICATES = 8;

/**
 * Most issuer checks (each one a signature verification at most) that one chain build makes. An
 * honest chain needs one per link plus a few for same-named candidates; the cap bounds what evidence
 * from an unauthenticated peer can cost, whatever it holds.
 */
export const MAX_ISSUER_CHECKS = 64;

function malformed(what: string, cause?: unknown): TpmVerifyError {
  const detail = cause instanceof Error ? ` (${cause.message})` : '';
  return new TpmVerifyError('ERR_TPM_MALFORMED', `${what} is not a valid X.509 certificate${detail}`, {
    cause,
  });
}

/** Each certificate's extensions, read once. */
const decodedCertificates = new WeakMap<X509Certificate, CertificateExtensions>();

/**
 * The second reading of `cert`: the strict DER reader must read the whole certificate and decode
 * every extension whose type @peculiar/x509 has a class for, so one either parser cannot read fails
 * here rather than in the middle of a decision. Returns the extensions.
 *
 * @throws TpmVerifyError ERR_TPM_MALFORMED when it cannot, though OpenSSL could.
 */
export function certificateExtensions(cert: X509Certificate, what: string): CertificateExtensions {
  let extensions = decodedCertificates.get(cert);
  if (extensions === undefined) {
    try {
      // OpenSSL decodes the key lazily too: a key that does not decode must fail here as well.
      cert.publicKey.export({ format: 'jwk' });
      extensions = decodeExtensions(readCertificateStructure(cert.raw));
    } catch (err) {
      throw malformed(what, err);
    }
    decodedCertificates.set(cert, extensions);
  }
  return extensions;
}

/**
 * Decodes an EK certificate given as PEM text, DER, or the raw content of its NV index.
 *
 * @throws TpmVerifyError ERR_TPM_MALFORMED when it is none of these, or when either parser (OpenSSL
 *   through node:crypto, the strict DER reader) cannot read it or one of its extensions.
 */
export function parseEkCertificate(data: Uint8Array | string): X509Certificate {
  const bytes = typeof data === 'string' ? Buffer.from(data) : Buffer.from(data);
  const isPem = bytes.subarray(0, 64).toString('latin1').includes('-----BEGIN');
  let cert: X509Certificate;
  try {
    // The NV content may carry the PC Client `10 01 00 len` header and padding; the agent side's
    // unwrapCertificate removes both.
    cert = new X509Certificate(isPem ? bytes : unwrapCertificate(bytes));
  } catch (err) {
    throw malformed('the EK certificate', err);
  }
  // Both parsers judge it, so a certificate one of them cannot read is refused here, as malformed.
  certificateExtensions(cert, 'the EK certificate');
  return cert;
}

/**
 * Decodes every certificate of a PEM bundle (a trust store file, an intermediates file).
 *
 * @throws TpmVerifyError ERR_TPM_MALFORMED, naming `source`, when the text holds no certificate or
 *   one of them does not decode.
 */
export function parseCertificateBundle(pem: string, source: string): X509Certificate[] {
  const blocks = pem.match(/-----BEGIN CERTIFICATE-----[^-]+-----END CERTIFICATE-----/g) ?? [];
  if (blocks.length === 0)
    throw new TpmVerifyError('ERR_TPM_MALFORMED', `${source}: no PEM certificate found`);
  return blocks.map((block, i) => {
    try {
      const cert = new X509Certificate(block);
      certificateExtensions(cert, `certificate ${i + 1}`);
      return cert;
    } catch (err) {
      throw new TpmVerifyError(
        'ERR_TPM_MALFORMED',
        `${source}: certificate ${i + 1} does not decode: ${String(err)}`,
        { cause: err },
      );
    }
  });
}

/** TPM facts from the EK certificate's subjectAltName directoryName (TCG EK Credential Profile). */
export interface TpmDeviceInfo {
  /** As in the certificate, e.g. `id:49424D00`. */
  readonly manufacturer: string;
  /** The manufacturer's 32-bit TCG vendor ID, when the attribute has the `id:XXXXXXXX` form. */
  readonly manufacturerId: number | undefined;
  /**
   * The vendor ID read as its four ASCII characters with trailing NULs and spaces removed (`IBM`,
   * `MSFT`, `INTC`), when they are printable; undefined otherwise (swtpm says `id:00001014`).
   */
  readonly vendor: string | undefined;
  /** TPM model, e.g. `swtpm` or `NPCT75x`. */
  readonly model: string;
  /** Firmware version as in the certificate, e.g. `id:20191023`. */
  readonly version: string;
}

function vendorString(id: number): string | undefined {
  const bytes = Buffer.alloc(4);
  bytes.writeUInt32BE(id);
  const text = bytes.toString('latin1').replace(/[\0 ]+$/, '');
  return text.length > 0 && /^[\x21-\x7e]+$/.test(text) ? text : undefined;
}

/**
 * Reads TPM manufacturer, model and version from the EK certificate's subjectAltName.
 *
 * @throws TpmVerifyError ERR_TPM_MALFORMED when the SAN or one of the three attributes is missing.
 */
export function ekCertificateTpmInfo(cert: X509Certificate): TpmDeviceInfo {
  const dirNames = certificateExtensions(cert, 'the EK certificate').subjectAltNameDirectoryNames ?? [];
  const field = (oid: string, label: string): string => {
    const value = dirNames.flat().find((attribute) => attribute.oid === oid)?.value;
    if (value === undefined)
      throw new TpmVerifyError(
        'ERR_TPM_MALFORMED',
        `EK certificate (subject ${oneLine(cert.subject)}) has no TPM ${label} (${oid}) in its subjectAltName directoryName`,
      );
    return value;
  };
  const manufacturer = field(OID.tpmManufacturer, 'manufacturer');
  const idMatch = /^id:([0-9a-fA-F]{8})$/.exec(manufacturer);
  const manufacturerId = idMatch?.[1] === undefined ? undefined : Number.parseInt(idMatch[1], 16);
  return {
    manufacturer,
    manufacturerId,
    vendor: manufacturerId === undefined ? undefined : vendorString(manufacturerId),
    model: field(OID.tpmModel, 'model'),
    version: field(OID.tpmVersion, 'version'),
  };
}

function publicJwk(key: KeyObject): Record<string, unknown> {
  const jwk = key.export({ format: 'jwk' });
  return jwk.kty === 'RSA'
    ? { kty: jwk.kty, n: jwk.n, e: jwk.e }
    : { kty: jwk.kty, crv: jwk.crv, x: jwk.x, y: jwk.y };
}

/**
 * Checks that the EK certificate certifies the EK the agent presented: same RSA modulus and exponent,
 * or same curve and point. Compared as JWK members, so encoding differences in the certificate's
 * SubjectPublicKeyInfo (parameters, point compression) do not matter.
 *
 * @throws TpmVerifyError ERR_TPM_EK_MISMATCH when the keys differ.
 */
export function checkEkCertificateKey(cert: X509Certificate, ek: TpmtPublic): void {
  const certKey = publicJwk(cert.publicKey);
  const ekKey = publicJwk(publicKeyFromArea(ek));
  const same = Object.keys({ ...certKey, ...ekKey }).every((k) => certKey[k] === ekKey[k]);
  if (!same)
    throw new TpmVerifyError(
      'ERR_TPM_EK_MISMATCH',
      `the EK certificate's public key (${certKey.kty}${certKey.crv ? ` ${certKey.crv}` : ''}) is not the EK public area the agent sent ` +
        `(${ekKey.kty}${ekKey.crv ? ` ${ekKey.crv}` : ''}); the agent must send the certificate read from the NV index of that same EK`,
    );
}

/**
 * The EK's stable identifier: lowercase hex SHA-256 of the EK public key's PKIX SubjectPublicKeyInfo
 * DER. This is what SPIRE's TPM node attestor hashes (Go's MarshalPKIXPublicKey), so agent IDs and
 * `hash_path` allow-lists carry over; and an operator can compute it from the EK certificate alone
 * (`openssl x509 -pubkey | openssl pkey -pubin -outform DER | sha256sum`), which a hash of
 * TPMT_PUBLIC would not allow.
 */
export function ekPublicKeyHash(ek: TpmtPublic): string {
  return createHash('sha256')
    .update(publicKeyFromArea(ek).export({ type: 'spki', format: 'der' }))
    .digest('hex');
}

/** Trust material for EK chains. */
export interface EkTrustStore {
  /** Manufacturer roots (or any certificate the operator chose to anchor on). */
  readonly roots: readonly X509Certificate[];
  /** Intermediates from configuration that may be used to reach a root. */
  readonly intermediates?: readonly X509Certificate[];
  /**
   * CA certificates the agent sent with its EK certificate (NV 0x01c00100+): untrusted input, so at
   * most MAX_PRESENTED_CERTIFICATES.
   */
  readonly presented?: readonly X509Certificate[];
}

function unhandledCritical(cert: X509Certificate): string[] {
  return certificateExtensions(cert, `the certificate of ${oneLine(cert.subject)}`)
    .all.filter((ext) => ext.critical && !HANDLED_CRITICAL.has(ext.oid))
    .map((ext) => ext.oid);
}

/**
 * Why `issuer` cannot have issued `child`, the last of `below` certificates in the chain so far, or
 * undefined when it can. node's checkIssued has already matched the names, key identifiers and
 * keyUsage keyCertSign (when present).
 */
function issuerProblem(
  issuer: X509Certificate,
  child: X509Certificate,
  below: number,
  at: Date,
): string | undefined {
  // The cheap checks first: a signature is verified only for an issuer that could otherwise serve.
  const constraints = certificateExtensions(
    issuer,
    `the certificate of ${oneLine(issuer.subject)}`,
  ).basicConstraints;
  if (!constraints?.ca) return `${oneLine(issuer.subject)} is not a CA (basicConstraints cA is not set)`;
  // pathLenConstraint counts the intermediates that may follow this CA; `below` includes the leaf.
  if (constraints.pathLength !== undefined && below - 1 > constraints.pathLength)
    return `${oneLine(issuer.subject)} allows ${constraints.pathLength} intermediate CA(s) below it, the chain has ${below - 1}`;
  const invalid = validityProblem(issuer, at);
  if (invalid !== undefined) return invalid;
  if (!child.verify(issuer.publicKey))
    return `the signature does not verify with the key of ${oneLine(issuer.subject)}`;
  return undefined;
}

/**
 * node:crypto prints multi-attribute names one per line, and gives undefined for an empty name:
 * the TCG EK profile leaves the EK certificate's subject empty (STMicro's are), the SAN names it.
 */
function oneLine(name: string | undefined): string {
  return name === undefined ? '(empty name)' : name.replaceAll('\n', ', ');
}

/**
 * A name as an index key: coarser than OpenSSL's name match (which ignores case and collapses
 * whitespace), so every certificate that check_issued could accept is found under its key.
 */
function nameKey(name: string | undefined): string {
  return (name ?? '').toLowerCase().replace(/\s+/g, '');
}

function validityProblem(cert: X509Certificate, at: Date): string | undefined {
  if (at < new Date(cert.validFrom)) return `${oneLine(cert.subject)} is not valid before ${cert.validFrom}`;
  if (at > new Date(cert.validTo)) return `${oneLine(cert.subject)} expired on ${cert.validTo}`;
  const unhandled = unhandledCritical(cert);
  if (unhandled.length > 0)
    return `${oneLine(cert.subject)} carries critical extension(s) ${unhandled.join(', ')} that are not processed`;
  return undefined;
}

/** One certificate placed in a chain, with the chain below it. */
interface Link {
  readonly cert: X509Certificate;
  readonly below: Link | undefined;
  /** Certificates from the EK certificate up to this one, both included. */
  readonly length: number;
}

function chainOf(link: Link): X509Certificate[] {
  const chain: X509Certificate[] = [];
  for (let at: Link | undefined = link; at !== undefined; at = at.below) chain.unshift(at.cert);
  return chain;
}

/**
 * Builds a path from the EK certificate to one of `trust.roots`, through `trust.intermediates` and
 * the certificates the agent presented. Every link is checked: the issuer's name, key identifier and
 * key usage fit (OpenSSL's check_issued), the issuer is a CA whose path length allows it, every
 * certificate (anchor included) is within its validity period at `at` and carries no critical
 * extension that is not understood (the TCG SAN and subjectDirectoryAttributes are), and the
 * signature verifies.
 *
 * The work is bounded whatever the input: identical certificates count once, candidates are looked
 * up by subject, the search goes breadth first and places each certificate in at most one chain,
 * and it stops at MAX_PRESENTED_CERTIFICATES, MAX_CHAIN_LENGTH and MAX_ISSUER_CHECKS.
 *
 * @returns the chain from the EK certificate to the anchor, both included (a shortest one).
 * @throws TpmVerifyError ERR_TPM_EK_UNTRUSTED naming the certificate's issuer and the reason the
 *   closest candidates failed; ERR_TPM_EK_CHAIN_LIMIT naming the cap that was reached;
 *   ERR_TPM_MALFORMED for a certificate the strict DER reader cannot decode.
 */
export function verifyEkCertificateChain(
  ekCert: X509Certificate,
  trust: EkTrustStore,
  at: Date = new Date(),
): X509Certificate[] {
  const untrusted = (reason: string): TpmVerifyError =>
    new TpmVerifyError(
      'ERR_TPM_EK_UNTRUSTED',
      `EK certificate issued by "${oneLine(ekCert.issuer)}" does not chain to a trusted root: ${reason}; ` +
        "add the TPM manufacturer's root (and any intermediate) to the EK trust store if this manufacturer is to be trusted",
    );
  const limit = (reason: string): TpmVerifyError =>
    new TpmVerifyError(
      'ERR_TPM_EK_CHAIN_LIMIT',
      `EK certificate issued by "${oneLine(ekCert.issuer)}" was not judged: ${reason}`,
    );
  const presented = trust.presented ?? [];
  if (presented.length > MAX_PRESENTED_CERTIFICATES)
    throw limit(
      `${presented.length} CA certificates came with it, more than MAX_PRESENTED_CERTIFICATES (${MAX_PRESENTED_CERTIFICATES}); ` +
        "put the manufacturer's intermediates in the EK trust store instead",
    );
  const leafProblem = validityProblem(ekCert, at);
  if (leafProblem !== undefined) throw untrusted(leafProblem);
  // An extendedKeyUsage limits what the certificate vouches for; an EK certificate's must allow
  // tcg-kp-EKCertificate. Without one, the certificate is not limited (RFC 5280 §4.2.1.12).
  const eku = certificateExtensions(ekCert, 'the EK certificate').extKeyUsage;
  if (eku && !eku.some((u) => u === OID.tcgKpEkCertificate || u === OID.anyExtendedKeyUsage))
    throw untrusted(
      `its extendedKeyUsage (${eku.join(', ')}) does not include tcg-kp-EKCertificate (${OID.tcgKpEkCertificate})`,
    );

  const roots = new Set(trust.roots.map((c) => c.fingerprint256));
  const bySubject = new Map<string, X509Certificate[]>();
  const indexed = new Set<string>();
  for (const cert of [...trust.roots, ...(trust.intermediates ?? []), ...presented]) {
    if (indexed.has(cert.fingerprint256)) continue;
    indexed.add(cert.fingerprint256);
    const key = nameKey(cert.subject);
    bySubject.set(key, [...(bySubject.get(key) ?? []), cert]);
  }

  // Breadth first, so each certificate is first reached by a shortest chain. A longer chain through
  // it could only fare worse (path length constraints and MAX_CHAIN_LENGTH count from the leaf), so
  // a certificate once placed is never tried again: no ordering of the pool is ever enumerated.
  const placed = new Set([ekCert.fingerprint256]);
  const problems: string[] = [];
  let checks = 0;
  let cut = false;
  let level: Link[] = [{ cert: ekCert, below: undefined, length: 1 }];
  while (level.length > 0) {
    const next: Link[] = [];
    for (const link of level) {
      const child = link.cert;
      const named = bySubject.get(nameKey(child.issuer)) ?? [];
      const fresh = named.filter((candidate) => !placed.has(candidate.fingerprint256));
      const issuers = fresh.filter((candidate) => child.checkIssued(candidate));
      if (issuers.length === 0 && fresh.length === named.length)
        problems.push(
          `nothing in the trust store issued ${oneLine(child.subject)} (its issuer is ${oneLine(child.issuer)}): ` +
            'no certificate has that subject, a matching key identifier and, if it has a keyUsage, keyCertSign',
        );
      if (issuers.length > 0 && link.length >= MAX_CHAIN_LENGTH) {
        cut = true;
        continue;
      }
      for (const candidate of issuers) {
        checks += 1;
        if (checks > MAX_ISSUER_CHECKS)
          throw limit(
            `no trusted root was reached within MAX_ISSUER_CHECKS (${MAX_ISSUER_CHECKS}) issuer checks; ` +
              'the certificates sent with it hold too many candidates of the same name; send only the intermediates of this EK certificate',
          );
        const problem = issuerProblem(candidate, child, link.length, at);
        if (problem !== undefined) {
          problems.push(problem);
          continue;
        }
        const up: Link = { cert: candidate, below: link, length: link.length + 1 };
        if (roots.has(candidate.fingerprint256)) return chainOf(up);
        placed.add(candidate.fingerprint256);
        next.push(up);
      }
    }
    level = next;
  }
  if (cut)
    throw limit(
      `no chain of at most MAX_CHAIN_LENGTH (${MAX_CHAIN_LENGTH}) certificates reaches a trusted root` +
        (problems.length > 0 ? ` (${problems.slice(0, 3).join('; ')})` : '') +
        '; anchor the EK trust store on an intermediate closer to the EK certificate',
    );
  throw untrusted(problems.slice(0, 3).join('; '));
}
