/**
 * EK certificates: decoding what the agent read from NV, the TPM facts in the certificate's
 * subjectAltName, the match between certificate key and EK public area, the EK's stable hash, and
 * chain building to configured manufacturer roots.
 *
 * Two parsers on purpose: node:crypto's X509Certificate (OpenSSL) does signatures, validity and the
 * issuer-name match; @peculiar/x509 decodes the extensions node:crypto does not expose (critical
 * flags, basicConstraints path length, the SAN's directoryName attributes).
 *
 * @module
 */
import 'reflect-metadata';
import { createHash, type KeyObject, X509Certificate } from 'node:crypto';
import * as x509 from '@peculiar/x509';
import { unwrapCertificate } from '../agent/ek.js';
import type { TpmtPublic } from '../codec/public.js';
import { publicKeyFromArea } from '../codec/public-key.js';
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
const MAX_CHAIN_LENGTH = 8;

function malformed(what: string, cause?: unknown): TpmVerifyError {
  return new TpmVerifyError('ERR_TPM_MALFORMED', `${what} is not a valid X.509 certificate`, { cause });
}

/**
 * Decodes one certificate as the verifier will read it: OpenSSL decodes the key lazily and
 * @peculiar/x509 reads the dates and extensions chain building uses, so both must succeed here, not
 * halfway through a key comparison or a chain.
 */
function decodeCertificate(data: Uint8Array | string): X509Certificate {
  const cert = new X509Certificate(data);
  cert.publicKey.export({ format: 'jwk' });
  new x509.X509Certificate(cert.raw);
  return cert;
}

/**
 * Decodes an EK certificate given as PEM text, DER, or the raw content of its NV index.
 *
 * @throws TpmVerifyError ERR_TPM_MALFORMED when it is none of these.
 */
export function parseEkCertificate(data: Uint8Array | string): X509Certificate {
  const bytes = typeof data === 'string' ? Buffer.from(data) : Buffer.from(data);
  const isPem = bytes.subarray(0, 64).toString('latin1').includes('-----BEGIN');
  try {
    // The NV content may carry the PC Client `10 01 00 len` header and padding; the agent side's
    // unwrapCertificate removes both.
    return decodeCertificate(isPem ? bytes : unwrapCertificate(bytes));
  } catch (err) {
    throw malformed('the EK certificate', err);
  }
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
      return decodeCertificate(block);
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
  let dirNames: x509.Name[];
  try {
    const parsed = new x509.X509Certificate(cert.raw);
    const san = parsed.getExtension(x509.SubjectAlternativeNameExtension);
    // @peculiar/x509 renders a directoryName as an RFC 4514 string; its own Name parser reads it back.
    dirNames = (san?.names.items ?? []).flatMap((item) =>
      item.type === 'dn' ? [new x509.Name(item.value)] : [],
    );
  } catch (cause) {
    throw new TpmVerifyError(
      'ERR_TPM_MALFORMED',
      `EK certificate (subject ${oneLine(cert.subject)}) has extensions that do not decode`,
      { cause },
    );
  }
  const field = (oid: string, label: string): string => {
    const value = dirNames.flatMap((name) => name.getField(oid))[0];
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
  /** Intermediates that may be used to reach a root, from configuration or NV 0x01c00100+. */
  readonly intermediates?: readonly X509Certificate[];
}

function unhandledCritical(cert: X509Certificate): string[] {
  return new x509.X509Certificate(cert.raw).extensions
    .filter((ext) => ext.critical && !HANDLED_CRITICAL.has(ext.type))
    .map((ext) => ext.type);
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
  if (!child.verify(issuer.publicKey))
    return `the signature does not verify with the key of ${oneLine(issuer.subject)}`;
  const parsed = new x509.X509Certificate(issuer.raw);
  const constraints = parsed.getExtension(x509.BasicConstraintsExtension);
  if (!constraints?.ca) return `${oneLine(issuer.subject)} is not a CA (basicConstraints cA is not set)`;
  // pathLenConstraint counts the intermediates that may follow this CA; `below` includes the leaf.
  if (constraints.pathLength !== undefined && below - 1 > constraints.pathLength)
    return `${oneLine(issuer.subject)} allows ${constraints.pathLength} intermediate CA(s) below it, the chain has ${below - 1}`;
  return validityProblem(issuer, at);
}

/** node:crypto prints multi-attribute names one per line. */
function oneLine(name: string): string {
  return name.replaceAll('\n', ', ');
}

function validityProblem(cert: X509Certificate, at: Date): string | undefined {
  if (at < new Date(cert.validFrom)) return `${oneLine(cert.subject)} is not valid before ${cert.validFrom}`;
  if (at > new Date(cert.validTo)) return `${oneLine(cert.subject)} expired on ${cert.validTo}`;
  const unhandled = unhandledCritical(cert);
  if (unhandled.length > 0)
    return `${oneLine(cert.subject)} carries critical extension(s) ${unhandled.join(', ')} that are not processed`;
  return undefined;
}

/**
 * Builds a path from the EK certificate to one of `trust.roots`, through `trust.intermediates`.
 * Every link is checked: the issuer's name, key identifier and key usage fit (OpenSSL's
 * check_issued), the signature verifies, the issuer is a CA whose path length allows it, and every
 * certificate (anchor included) is within its validity period at `at` and carries no critical
 * extension that is not understood. The TCG SAN and subjectDirectoryAttributes are understood.
 *
 * @returns the chain from the EK certificate to the anchor, both included.
 * @throws TpmVerifyError ERR_TPM_EK_UNTRUSTED naming the certificate's issuer and the reason the
 *   closest candidate failed.
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
  const leafProblem = validityProblem(ekCert, at);
  if (leafProblem !== undefined) throw untrusted(leafProblem);
  // An extendedKeyUsage limits what the certificate vouches for; an EK certificate's must allow
  // tcg-kp-EKCertificate. Without one, the certificate is not limited (RFC 5280 §4.2.1.12).
  const eku = new x509.X509Certificate(ekCert.raw).getExtension(x509.ExtendedKeyUsageExtension);
  if (eku && !eku.usages.some((u) => u === OID.tcgKpEkCertificate || u === OID.anyExtendedKeyUsage))
    throw untrusted(
      `its extendedKeyUsage (${eku.usages.join(', ')}) does not include tcg-kp-EKCertificate (${OID.tcgKpEkCertificate})`,
    );

  const roots = new Set(trust.roots);
  const pool = [...trust.roots, ...(trust.intermediates ?? [])];
  const problems: string[] = [];

  const extend = (chain: X509Certificate[]): X509Certificate[] | undefined => {
    const child = chain[chain.length - 1];
    if (child === undefined || chain.length >= MAX_CHAIN_LENGTH) return undefined;
    const issuers = pool.filter((candidate) => !chain.includes(candidate) && child.checkIssued(candidate));
    if (issuers.length === 0)
      problems.push(
        `nothing in the trust store issued ${oneLine(child.subject)} (its issuer is ${oneLine(child.issuer)}): ` +
          'no certificate has that subject, a matching key identifier and, if it has a keyUsage, keyCertSign',
      );
    for (const candidate of issuers) {
      const problem = issuerProblem(candidate, child, chain.length, at);
      if (problem !== undefined) {
        problems.push(problem);
        continue;
      }
      const longer = [...chain, candidate];
      if (roots.has(candidate)) return longer;
      const found = extend(longer);
      if (found) return found;
    }
    return undefined;
  };

  const chain = extend([ekCert]);
  if (chain) return chain;
  throw untrusted(problems.slice(0, 3).join('; '));
}
