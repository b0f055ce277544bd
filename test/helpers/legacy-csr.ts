/**
 * The CSR parser and builder as they were before ironroot read and wrote CSRs in DER directly
 * (src/spiffe/csr-reader.ts, src/spiffe/csr.ts): @peculiar/x509 decoding the request and WebCrypto
 * verifying it; @peculiar/x509 encoding it and a Signer signing it. Kept in the tests only, as the
 * references the new code is compared with.
 *
 * @module
 */
import { createPublicKey, type KeyObject, webcrypto } from 'node:crypto';
import { DerError } from '../../src/der/index.js';
import { type CsrTemplate, parseCsr } from '../../src/spiffe/csr.js';
import { SignatureAlgorithmError } from '../../src/spiffe/csr-signature.js';
import { pemBlocks } from '../../src/spiffe/der.js';
import { SpiffeError } from '../../src/spiffe/errors.js';
import type { Signer } from '../../src/spiffe/signer.js';
import { signerWebCrypto, signingParams } from '../../src/spiffe/signer-crypto.js';
import { SpiffeId } from '../../src/spiffe/spiffe-id.js';
import { px } from './x509.js';

/** What a parser made of one input: the fields it returned, or the code it refused with. */
export type CsrOutcome =
  | { accepted: true; spiffeId: string; dnsNames: string[]; spki: string }
  | { accepted: false; code: string; message: string };

/** The previous parseCsr, verbatim in behaviour (codes, messages, order of checks). */
export async function legacyParseCsr(
  input: Uint8Array | string,
): Promise<{ spiffeId: SpiffeId; dnsNames: string[]; publicKey: KeyObject }> {
  let csr: px.Pkcs10CertificateRequest;
  let publicKey: KeyObject;
  try {
    const der =
      typeof input === 'string'
        ? pemBlocks(input).find((b) => b.label === 'CERTIFICATE REQUEST')?.der
        : input;
    if (der === undefined) throw new Error('no CERTIFICATE REQUEST PEM block');
    csr = new px.Pkcs10CertificateRequest(der);
    publicKey = createPublicKey({ key: Buffer.from(csr.publicKey.rawData), format: 'der', type: 'spki' });
  } catch (err) {
    throw new SpiffeError(
      'ERR_CSR_PARSE',
      'input is not a PKCS#10 certificate signing request (DER or PEM)',
      {
        cause: err,
      },
    );
  }
  let valid: boolean;
  try {
    valid = await csr.verify(webcrypto);
  } catch {
    valid = false;
  }
  if (!valid) {
    throw new SpiffeError(
      'ERR_CSR_BAD_SIGNATURE',
      "CSR signature does not verify with the CSR's own public key; the requester must sign it with the key it asks to certify",
    );
  }
  let names: px.GeneralName[];
  try {
    names = csr.extensions
      .filter((e) => e instanceof px.SubjectAlternativeNameExtension)
      .flatMap((e) => e.names.items);
  } catch (err) {
    throw new SpiffeError('ERR_CSR_PARSE', 'CSR carries an extension that does not decode; rebuild the CSR', {
      cause: err,
    });
  }
  const uris = names.filter((n) => n.type === 'url');
  if (uris.length > 1) {
    throw new SpiffeError(
      'ERR_CSR_MULTIPLE_URI_SANS',
      `CSR requests ${uris.length} URI SANs; an X.509-SVID has exactly one`,
    );
  }
  const uri = uris[0];
  if (uri === undefined) {
    throw new SpiffeError(
      'ERR_CSR_NO_URI_SAN',
      'CSR requests no URI SAN; it must carry the SPIFFE ID as its one URI SAN',
    );
  }
  const dnsNames = names.filter((n) => n.type === 'dns').map((n) => n.value);
  // biome-ignore lint/suspicious/noControlCharactersInRegex: IA5 is exactly the 7-bit range.
  const notAscii = dnsNames.find((name) => !/^[\x00-\x7f]*$/.test(name));
  if (notAscii !== undefined) {
    throw new SpiffeError(
      'ERR_CSR_PARSE',
      `CSR requests the DNS SAN ${JSON.stringify(notAscii)}, which is not ASCII; request its A-label (punycode) form`,
    );
  }
  return { spiffeId: SpiffeId.parse(uri.value), dnsNames, publicKey };
}

async function outcomeOf(
  parse: (
    input: Uint8Array | string,
  ) => Promise<{ spiffeId: SpiffeId; dnsNames: readonly string[]; publicKey: KeyObject }>,
  input: Uint8Array | string,
): Promise<{ outcome: CsrOutcome; error?: unknown }> {
  try {
    const got = await parse(input);
    const spki = got.publicKey.export({ type: 'spki', format: 'der' }).toString('hex');
    return {
      outcome: { accepted: true, spiffeId: got.spiffeId.toString(), dnsNames: [...got.dnsNames], spki },
    };
  } catch (error) {
    if (!(error instanceof SpiffeError)) throw error;
    return { outcome: { accepted: false, code: error.code, message: error.message }, error };
  }
}

/**
 * Parses `input` with both parsers and returns the new parser's outcome; throws (a plain Error,
 * which the fuzz oracle reports as a defect) when they differ. The one allowed difference is the
 * new reader's strictness ({@link strictnessRefusal}).
 */
export async function parseCsrBothWays(input: Uint8Array | string): Promise<CsrOutcome> {
  const now = await outcomeOf(parseCsr, input);
  const before = await outcomeOf(legacyParseCsr, input);
  if (JSON.stringify(now.outcome) === JSON.stringify(before.outcome)) return now.outcome;
  if (strictnessRefusal(now.error)) return now.outcome;
  throw new Error(
    `parseCsr and the previous parser disagree: now ${JSON.stringify(now.outcome)}, before ${JSON.stringify(before.outcome)}` +
      (now.error instanceof Error && now.error.cause instanceof Error
        ? ` (now's cause: ${now.error.cause.message})`
        : ''),
  );
}

/**
 * A refusal the new reader makes on purpose: ERR_CSR_PARSE caused by the strict DER reader (BER,
 * trailing bytes, a wrong tag), or ERR_CSR_BAD_SIGNATURE for a signature algorithm or parameters it
 * does not accept (@peculiar/x509 ignored the parameters of most algorithms) or an ECDSA signature
 * value that is not DER (@peculiar/x509 read some BER forms of it).
 */
export function strictnessRefusal(error: unknown): boolean {
  if (!(error instanceof SpiffeError)) return false;
  if (error.code === 'ERR_CSR_PARSE') return error.cause instanceof DerError;
  return (
    error.code === 'ERR_CSR_BAD_SIGNATURE' &&
    (error.cause instanceof SignatureAlgorithmError || error.cause instanceof DerError)
  );
}

/**
 * The previous createCsr, verbatim in its output: @peculiar/x509's generator with the signer behind
 * a WebCrypto-shaped adapter, the public key exported by OpenSSL.
 */
export async function legacyCreateCsr(template: CsrTemplate, signer: Signer): Promise<Uint8Array> {
  const names: px.JsonGeneralName[] = [
    { type: 'url', value: template.spiffeId.toString() },
    ...(template.dnsNames ?? []).map((value) => ({ type: 'dns' as const, value })),
  ];
  const subject = template.subject ?? '';
  const { crypto, key } = signerWebCrypto(signer);
  // The generator also exports the public key, which the library's adapter no longer offers.
  const subtle = {
    sign: crypto.subtle.sign,
    exportKey: async (): Promise<ArrayBuffer> =>
      new Uint8Array(signer.publicKey.export({ type: 'spki', format: 'der' })).buffer,
  };
  const csr = await px.Pkcs10CertificateRequestGenerator.create(
    {
      name: new px.Name(subject),
      keys: { publicKey: key, privateKey: key },
      signingAlgorithm: signingParams(signer),
      extensions: [new px.SubjectAlternativeNameExtension(names, subject === '')],
    },
    { subtle } as unknown as webcrypto.Crypto,
  );
  return new Uint8Array(csr.rawData);
}
