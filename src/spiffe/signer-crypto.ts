import type { webcrypto } from 'node:crypto';
import type { Signer } from './signer.js';

/** WebCrypto algorithm parameters @peculiar/x509 needs to name and encode a signature. */
type SigningParams =
  | { name: 'ECDSA'; hash: string; namedCurve: string }
  | { name: 'RSASSA-PKCS1-v1_5'; hash: string }
  | { name: 'RSA-PSS'; hash: string; saltLength: number };

const CURVES: Record<string, string> = { prime256v1: 'P-256', secp384r1: 'P-384', secp521r1: 'P-521' };

/** The WebCrypto parameters matching `signer.algorithm` and its key. */
export function signingParams(signer: Signer): SigningParams {
  const alg = signer.algorithm;
  const hash = `SHA-${alg.slice(2)}`;
  if (alg.startsWith('ES')) {
    const curve = signer.publicKey.asymmetricKeyDetails?.namedCurve ?? '';
    return { name: 'ECDSA', hash, namedCurve: CURVES[curve] ?? curve };
  }
  if (alg.startsWith('PS')) return { name: 'RSA-PSS', hash, saltLength: Number(alg.slice(2)) / 8 };
  return { name: 'RSASSA-PKCS1-v1_5', hash };
}

/**
 * A WebCrypto-shaped provider and key handle that route @peculiar/x509's one signing call to a
 * {@link Signer}; used for CA certificates, a few per rotation (SVIDs and CSRs are encoded directly,
 * see der-writer.ts).
 *
 * Why an adapter there: @peculiar/x509 serialises the TBS, names the algorithm and turns the r‖s
 * ECDSA value into the DER `ECDSA-Sig-Value` X.509 needs; its generator takes the provider per call,
 * so nothing global is swapped and HSM and in-memory signers can sign concurrently. The certificate
 * generator, given the subject key as bytes, only ever calls `subtle.sign`, so the adapter implements
 * exactly that; anything else would fail loudly.
 */
export function signerWebCrypto(signer: Signer): { crypto: webcrypto.Crypto; key: webcrypto.CryptoKey } {
  const algorithm = signingParams(signer);
  const key = { type: 'private', extractable: false, algorithm, usages: ['sign'] };
  const subtle = {
    sign: async (_alg: unknown, _key: unknown, data: ArrayBuffer | ArrayBufferView): Promise<ArrayBuffer> => {
      const bytes =
        data instanceof ArrayBuffer
          ? new Uint8Array(data)
          : new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
      const sig = await signer.sign(bytes);
      return sig.slice().buffer as ArrayBuffer;
    },
  };
  // The casts are the adapter's whole point: only the member above is ever used (see above).
  return { crypto: { subtle } as unknown as webcrypto.Crypto, key: key as unknown as webcrypto.CryptoKey };
}
