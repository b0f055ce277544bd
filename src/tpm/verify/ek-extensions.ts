/**
 * The extensions of an EK or EK CA certificate, read from its DER with a strict reader: every
 * extension's OID, critical flag and value, and the values the verifier decides on (basicConstraints,
 * extendedKeyUsage, the TCG subjectAltName's directoryName attributes) decoded.
 *
 * This replaced @peculiar/x509's extension classes on the attestation path: they decoded each value
 * twice over a generic ASN.1 tree and rendered the SAN's directoryName as a string that had to be
 * parsed back, about a third of the EK judgement's cost. Every extension type those classes decode
 * is still decoded here, to its structure, so one that does not read is still refused (as are
 * GeneralName forms the verifier cannot represent: x400Address, ediPartyName); other OIDs are
 * carried as bytes.
 *
 * @module
 */
import {
  booleanValue,
  checkBitString,
  DerError,
  type DerReader,
  type DerValue,
  eachOf,
  inside,
  oidText,
  readOid,
  readOne,
  smallUnsigned,
  TAG,
} from '../../der/index.js';

/** One Extension as the certificate carries it. */
export interface CertificateExtension {
  /** extnID, dotted. */
  readonly oid: string;
  readonly critical: boolean;
  /** extnValue's content: the DER of the extension's own value. */
  readonly value: Uint8Array;
}

export interface BasicConstraints {
  readonly ca: boolean;
  /** pathLenConstraint, when present. */
  readonly pathLength: number | undefined;
}

/** One attribute of a directoryName: its type and its value as text. */
export interface NameAttribute {
  readonly oid: string;
  /** A string type's characters as written; any other type as `#` and the hex of its DER (RFC 4514). */
  readonly value: string;
}

export interface CertificateExtensions {
  /** Every extension, in certificate order. */
  readonly all: readonly CertificateExtension[];
  /** The first of each decision-relevant extension, decoded; undefined when absent. */
  readonly basicConstraints: BasicConstraints | undefined;
  readonly extKeyUsage: readonly string[] | undefined;
  /** The attributes of each directoryName in the subjectAltName, in order. */
  readonly subjectAltNameDirectoryNames: readonly (readonly NameAttribute[])[] | undefined;
}

export const EXTENSION_OID = {
  subjectKeyIdentifier: '2.5.29.14',
  keyUsage: '2.5.29.15',
  subjectAltName: '2.5.29.17',
  issuerAltName: '2.5.29.18',
  basicConstraints: '2.5.29.19',
  cRLDistributionPoints: '2.5.29.31',
  certificatePolicies: '2.5.29.32',
  authorityKeyIdentifier: '2.5.29.35',
  extKeyUsage: '2.5.29.37',
  authorityInfoAccess: '1.3.6.1.5.5.7.1.1',
} as const;

const STRING_DECODERS: ReadonlyMap<number, (content: Uint8Array) => string> = new Map([
  [0x0c, (c: Uint8Array) => new TextDecoder('utf-8', { fatal: true }).decode(c)], // UTF8String
  [0x12, (c: Uint8Array) => Buffer.from(c).toString('latin1')], // NumericString
  [0x13, (c: Uint8Array) => Buffer.from(c).toString('latin1')], // PrintableString
  [0x14, (c: Uint8Array) => Buffer.from(c).toString('latin1')], // TeletexString
  [0x16, (c: Uint8Array) => Buffer.from(c).toString('latin1')], // IA5String
  [0x1a, (c: Uint8Array) => Buffer.from(c).toString('latin1')], // VisibleString
  [0x1e, (c: Uint8Array) => new TextDecoder('utf-16be', { fatal: true }).decode(c)], // BMPString
]);

/**
 * RelativeDistinguishedName ::= SET SIZE (1..MAX) OF AttributeTypeAndValue; appends each attribute
 * to `into`, its value as text, or only checks the structure when `into` is undefined. The SET's
 * DER order is not checked, as OpenSSL does not: Nuvoton's EK certificates and CAs write their
 * names as one multi-valued RDN in CN, O, C order (test/fixtures/ek-vendor).
 */
function readRdn(rdn: DerValue, what: string, into?: NameAttribute[]): void {
  if (rdn.content.length === 0) throw new DerError(`${what}: empty RelativeDistinguishedName`);
  eachOf(rdn, what, (set) => {
    const pair = inside(set.read(TAG.SEQUENCE, 'AttributeTypeAndValue'), what);
    const oid = readOid(pair, 'attribute type');
    const attribute = pair.read(undefined, 'attribute value');
    pair.end();
    if (into === undefined) return;
    const decode = STRING_DECODERS.get(attribute.tag);
    try {
      const text =
        decode === undefined
          ? `#${Buffer.from(attribute.encoded).toString('hex')}`
          : decode(attribute.content);
      into.push({ oid, value: text });
    } catch {
      throw new DerError(`${what}: attribute ${oid} is not valid text for its string type`);
    }
  });
}

/**
 * Name ::= SEQUENCE OF RelativeDistinguishedName. Returns the attributes in order, as text when
 * `text` (a subject or issuer name is only checked: OpenSSL renders those for the decisions).
 */
export function readName(value: DerValue, what: string, text = true): NameAttribute[] {
  const attributes: NameAttribute[] = [];
  const into = text ? attributes : undefined;
  eachOf(value, what, (rdns) => readRdn(rdns.read(TAG.SET, 'RelativeDistinguishedName'), what, into));
  return attributes;
}

/** Reads one GeneralName; returns a directoryName's attributes, undefined for any other form. */
function readGeneralName(reader: DerReader, what: string): NameAttribute[] | undefined {
  const name = reader.read(undefined, 'GeneralName');
  switch (name.tag) {
    case 0xa0: {
      // otherName: type-id OBJECT IDENTIFIER, value [0] EXPLICIT ANY
      const other = inside(name, `${what} otherName`);
      readOid(other, 'otherName type-id');
      readOne(other.read(0xa0, 'otherName value').content, undefined, `${what} otherName value`);
      other.end();
      return undefined;
    }
    case 0x81: // rfc822Name
    case 0x82: // dNSName
    case 0x86: // uniformResourceIdentifier
      if (name.content.some((byte) => byte > 0x7f))
        throw new DerError(`${what}: an IA5String GeneralName holds a non-ASCII byte`);
      return undefined;
    case 0xa4: {
      const directory = inside(name, `${what} directoryName`);
      const attributes = readName(directory.read(TAG.SEQUENCE, 'directoryName'), `${what} directoryName`);
      directory.end();
      return attributes;
    }
    case 0x87:
      if (name.content.length !== 4 && name.content.length !== 16)
        throw new DerError(`${what}: an iPAddress GeneralName is neither 4 nor 16 bytes`);
      return undefined;
    case 0x88:
      oidText(name.content, `${what} registeredID`);
      return undefined;
    case 0xa3:
      throw new DerError(`${what}: GeneralName form X400Address is not supported`);
    case 0xa5:
      throw new DerError(`${what}: GeneralName form EDIPartyName is not supported`);
    default:
      throw new DerError(
        `${what}: GeneralName with tag 0x${name.tag.toString(16)} is not a GeneralName form`,
      );
  }
}

/** GeneralNames ::= SEQUENCE SIZE (1..MAX) OF GeneralName; returns the directoryNames. */
function readGeneralNames(value: DerValue, what: string): NameAttribute[][] {
  if (value.content.length === 0) throw new DerError(`${what}: empty GeneralNames`);
  const directoryNames: NameAttribute[][] = [];
  eachOf(value, what, (reader) => {
    const attributes = readGeneralName(reader, what);
    if (attributes !== undefined) directoryNames.push(attributes);
  });
  return directoryNames;
}

/** Decodes one extension's value; returns what a decision reads from it, if anything. */
function decodeValue(extension: CertificateExtension): unknown {
  const what = `extension ${extension.oid}`;
  const top = (tag: number): DerValue => readOne(extension.value, tag, what);
  switch (extension.oid) {
    case EXTENSION_OID.basicConstraints: {
      const fields = inside(top(TAG.SEQUENCE), what);
      const caField = fields.optional(TAG.BOOLEAN, 'cA');
      const pathField = fields.optional(TAG.INTEGER, 'pathLenConstraint');
      fields.end();
      return {
        ca: caField === undefined ? false : booleanValue(caField, `${what} cA`),
        pathLength:
          pathField === undefined ? undefined : smallUnsigned(pathField, `${what} pathLenConstraint`),
      } satisfies BasicConstraints;
    }
    case EXTENSION_OID.keyUsage:
      checkBitString(top(TAG.BIT_STRING).content, what);
      return undefined;
    case EXTENSION_OID.extKeyUsage: {
      const usages: string[] = [];
      eachOf(top(TAG.SEQUENCE), what, (r) => usages.push(readOid(r, `${what} KeyPurposeId`)));
      return usages;
    }
    case EXTENSION_OID.subjectKeyIdentifier:
      top(TAG.OCTET_STRING);
      return undefined;
    case EXTENSION_OID.authorityKeyIdentifier: {
      const fields = inside(top(TAG.SEQUENCE), what);
      fields.optional(0x80, 'keyIdentifier');
      const issuer = fields.optional(0xa1, 'authorityCertIssuer');
      if (issuer !== undefined) readGeneralNames(issuer, `${what} authorityCertIssuer`);
      const serial = fields.optional(0x82, 'authorityCertSerialNumber');
      if (serial !== undefined && serial.content.length === 0)
        throw new DerError(`${what}: empty authorityCertSerialNumber`);
      fields.end();
      return undefined;
    }
    case EXTENSION_OID.subjectAltName:
    case EXTENSION_OID.issuerAltName:
      return readGeneralNames(top(TAG.SEQUENCE), what);
    case EXTENSION_OID.certificatePolicies:
      eachOf(top(TAG.SEQUENCE), what, (policies) => {
        const policy = inside(policies.read(TAG.SEQUENCE, 'PolicyInformation'), what);
        readOid(policy, 'policyIdentifier');
        const qualifiers = policy.optional(TAG.SEQUENCE, 'policyQualifiers');
        if (qualifiers !== undefined)
          eachOf(qualifiers, what, (list) => {
            const qualifier = inside(list.read(TAG.SEQUENCE, 'PolicyQualifierInfo'), what);
            readOid(qualifier, 'policyQualifierId');
            qualifier.read(undefined, 'qualifier');
            qualifier.end();
          });
        policy.end();
      });
      return undefined;
    case EXTENSION_OID.cRLDistributionPoints:
      eachOf(top(TAG.SEQUENCE), what, (points) => {
        const point = inside(points.read(TAG.SEQUENCE, 'DistributionPoint'), what);
        const name = point.optional(0xa0, 'distributionPoint');
        if (name !== undefined) {
          const choice = inside(name, what);
          const form = choice.read(undefined, 'DistributionPointName');
          if (form.tag === 0xa0) readGeneralNames(form, `${what} fullName`);
          else if (form.tag === 0xa1) readRdn(form, `${what} nameRelativeToCRLIssuer`);
          else throw new DerError(`${what}: DistributionPointName with tag 0x${form.tag.toString(16)}`);
          choice.end();
        }
        const reasons = point.optional(0x81, 'reasons');
        if (reasons !== undefined) checkBitString(reasons.content, `${what} reasons`);
        const issuer = point.optional(0xa2, 'cRLIssuer');
        if (issuer !== undefined) readGeneralNames(issuer, `${what} cRLIssuer`);
        point.end();
      });
      return undefined;
    case EXTENSION_OID.authorityInfoAccess:
      eachOf(top(TAG.SEQUENCE), what, (list) => {
        const access = inside(list.read(TAG.SEQUENCE, 'AccessDescription'), what);
        readOid(access, 'accessMethod');
        readGeneralName(access, `${what} accessLocation`);
        access.end();
      });
      return undefined;
    default:
      // No decision reads other extensions; their values are kept as bytes, undecoded.
      return undefined;
  }
}

/**
 * Decodes the values of a certificate's extensions (as certificate-structure.ts reads them).
 *
 * @throws DerError naming the extension and what in it does not decode.
 */
export function decodeExtensions(all: readonly CertificateExtension[]): CertificateExtensions {
  let basicConstraints: BasicConstraints | undefined;
  let extKeyUsage: readonly string[] | undefined;
  let subjectAltNameDirectoryNames: NameAttribute[][] | undefined;
  for (const extension of all) {
    const decoded = decodeValue(extension);
    if (extension.oid === EXTENSION_OID.basicConstraints) basicConstraints ??= decoded as BasicConstraints;
    else if (extension.oid === EXTENSION_OID.extKeyUsage) extKeyUsage ??= decoded as string[];
    else if (extension.oid === EXTENSION_OID.subjectAltName)
      subjectAltNameDirectoryNames ??= decoded as NameAttribute[][];
  }
  return { all, basicConstraints, extKeyUsage, subjectAltNameDirectoryNames };
}
