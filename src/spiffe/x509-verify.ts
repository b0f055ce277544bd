import type { X509Certificate } from 'node:crypto';
import type { X509BundleSource } from './bundle/bundle-set.js';
import { SpiffeError } from './errors.js';
import type { SpiffeId } from './spiffe-id.js';
import { dnsMatchesConstraint, hostMatchesUriConstraint } from './x509-extensions.js';
import { type CertFacts, checkLeaf, checkSigning, inspect } from './x509-inspect.js';

/** Options of {@link verifyX509Svid}. */
export interface VerifyX509Options {
  /** The time validity is checked at; default: now. */
  time?: Date;
}

/** A peer's X.509-SVID that passed validation. */
export interface VerifiedX509Svid {
  /** The peer's SPIFFE ID. */
  readonly id: SpiffeId;
  /** Leaf first, through the intermediates actually used, ending with the bundle's root. */
  readonly chain: readonly X509Certificate[];
}

/**
 * Validates a peer's X.509-SVID chain (leaf first, then any intermediates) per X509-SVID §5: RFC 5280
 * path validation to a root of the bundle for the **leaf's** trust domain (X-19, X-25) — signatures,
 * validity at `options.time`, CA flags and keyUsage, `pathLenConstraint`, URI/DNS name constraints,
 * unknown critical extensions — plus the SPIFFE leaf rules: one URI SAN that is a SPIFFE ID with a
 * path, `cA=false`, no `keyCertSign`/`cRLSign`, `digitalSignature`, EKU (when present) with both
 * TLS usages (X-20..X-24).
 *
 * @throws SpiffeError with an `ERR_X509SVID_*` code (or `ERR_SPIFFEID_*` when the URI SAN is not a
 *   valid SPIFFE ID).
 * @example
 * ```ts
 * const { id } = verifyX509Svid(peerChain, bundleSet, { time: new Date() });
 * matchMemberOf(trustDomain)(id);
 * ```
 */
export function verifyX509Svid(
  chain: readonly X509Certificate[],
  bundles: X509BundleSource,
  options: VerifyX509Options = {},
): VerifiedX509Svid {
  const time = options.time ?? new Date();
  const [leafCert, ...intermediates] = chain;
  if (leafCert === undefined) {
    throw new SpiffeError(
      'ERR_X509SVID_NO_CERTIFICATES',
      'no certificates to verify; a peer must present its leaf SVID',
    );
  }
  const leaf = inspect(leafCert, 'leaf');
  const id = checkLeaf(leaf);
  const bundle = bundles.getX509BundleForTrustDomain(id.trustDomain);
  if (bundle === undefined) {
    throw new SpiffeError(
      'ERR_X509SVID_NO_BUNDLE',
      `no X.509 bundle for trust domain "${id.trustDomain}"; a peer is trusted only through its own trust domain's bundle (Workload API §4.6)`,
    );
  }
  const path = buildPath(leaf, intermediates, bundle.authorities);
  for (const f of path) {
    checkCriticalExtensions(f);
    checkValidity(f, time);
  }
  path.slice(1).forEach((ca, index) => {
    checkSigning(ca);
    // Certificates between this CA and the leaf; RFC 5280 §4.2.1.9 counts intermediates only.
    if (ca.pathLength !== undefined && index > ca.pathLength) {
      throw new SpiffeError(
        'ERR_X509SVID_PATH_LENGTH',
        `${ca.label} certificate allows ${ca.pathLength} intermediate(s) below it but the chain has ${index}; RFC 5280 §4.2.1.9 pathLenConstraint`,
      );
    }
    if (ca.nameConstraints !== undefined) {
      for (const below of path.slice(0, index + 1)) checkNameConstraints(ca, below);
    }
  });
  return { id, chain: path.map((f) => f.cert) };
}

/**
 * Finds the issuer of each certificate, first among the bundle's roots, then among the presented
 * intermediates, until a root is reached. A name match whose signature fails is remembered, so the
 * error says "bad signature" rather than "unknown issuer".
 */
function buildPath(
  leaf: CertFacts,
  intermediates: readonly X509Certificate[],
  roots: readonly X509Certificate[],
): CertFacts[] {
  const path = [leaf];
  const unused = [...intermediates];
  let current = leaf.cert;
  let badSignature = false;
  for (;;) {
    const issuedBy = (candidate: X509Certificate): boolean => {
      // Names only: Node's checkIssued also requires keyCertSign, which would turn a CA without it
      // into "unknown issuer" instead of the precise error checkSigning gives.
      if (current.issuer !== candidate.subject) return false;
      if (current.verify(candidate.publicKey)) return true;
      badSignature = true;
      return false;
    };
    const root = roots.find(issuedBy);
    if (root !== undefined) {
      if (!root.raw.equals(current.raw)) path.push(inspect(root, 'root'));
      return path;
    }
    const index = unused.findIndex(issuedBy);
    const next = unused[index];
    if (next === undefined) {
      if (badSignature) {
        throw new SpiffeError(
          'ERR_X509SVID_BAD_SIGNATURE',
          `the signature on the ${path.length === 1 ? 'leaf' : `intermediate ${path.length - 1}`} certificate does not verify with its issuer's key`,
        );
      }
      throw new SpiffeError(
        'ERR_X509SVID_UNTRUSTED',
        "the chain does not lead to any root of the leaf's trust-domain bundle (X509-SVID §5.1); the peer is untrusted",
      );
    }
    unused.splice(index, 1);
    path.push(inspect(next, `intermediate ${path.length}`));
    current = next;
  }
}

function checkValidity(f: CertFacts, time: Date): void {
  if (time < f.notBefore) {
    throw new SpiffeError(
      'ERR_X509SVID_NOT_YET_VALID',
      `${f.label} certificate is not valid until ${f.notBefore.toISOString()} (checked at ${time.toISOString()})`,
    );
  }
  if (time > f.notAfter) {
    throw new SpiffeError(
      'ERR_X509SVID_EXPIRED',
      `${f.label} certificate expired at ${f.notAfter.toISOString()} (checked at ${time.toISOString()})`,
    );
  }
}

function checkCriticalExtensions(f: CertFacts): void {
  if (f.unknownCritical.length > 0) {
    throw new SpiffeError(
      'ERR_X509SVID_UNKNOWN_CRITICAL_EXTENSION',
      `${f.label} certificate has critical extension(s) ${f.unknownCritical.join(', ')} that this validator does not process; RFC 5280 §6.1.4 requires rejecting it`,
    );
  }
}

/** RFC 5280 §4.2.1.10 for the URI (SPIFFE ID) and DNS names of `subject` under `ca`'s constraints. */
function checkNameConstraints(ca: CertFacts, subject: CertFacts): void {
  const nc = ca.nameConstraints;
  if (nc === undefined) return;
  const violation = (name: string) =>
    new SpiffeError(
      'ERR_X509SVID_NAME_CONSTRAINTS',
      `${subject.label} certificate name "${name}" is outside the name constraints of the ${ca.label} certificate (X509-SVID §4.2, RFC 5280 §4.2.1.10)`,
    );
  for (const uri of subject.uris) {
    const host = /^[a-zA-Z][a-zA-Z0-9+.-]*:\/\/([^/?#]*)/.exec(uri)?.[1] ?? '';
    if (nc.permittedUris.length > 0 && !nc.permittedUris.some((c) => hostMatchesUriConstraint(host, c))) {
      throw violation(uri);
    }
    if (nc.excludedUris.some((c) => hostMatchesUriConstraint(host, c))) throw violation(uri);
  }
  for (const dns of subject.dnsNames) {
    if (nc.permittedDns.length > 0 && !nc.permittedDns.some((c) => dnsMatchesConstraint(dns, c))) {
      throw violation(dns);
    }
    if (nc.excludedDns.some((c) => dnsMatchesConstraint(dns, c))) throw violation(dns);
  }
}
