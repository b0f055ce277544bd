import { X509Certificate } from 'node:crypto';

/**
 * Splits concatenated DER values (the Workload API's form for chains and bundles) into single
 * values by reading each outer tag and length. Returns undefined when the bytes do not split
 * cleanly, so callers can report the input as malformed.
 */
export function splitDer(bytes: Uint8Array): Uint8Array[] | undefined {
  const out: Uint8Array[] = [];
  let offset = 0;
  while (offset < bytes.length) {
    const first = bytes[offset + 1];
    if (first === undefined) return undefined;
    let length = first;
    let header = 2;
    if (first & 0x80) {
      const count = first & 0x7f;
      // Indefinite lengths are not DER, and four length bytes already allow 4 GiB.
      if (count === 0 || count > 4) return undefined;
      length = 0;
      for (let i = 0; i < count; i++) {
        const b = bytes[offset + 2 + i];
        if (b === undefined) return undefined;
        length = length * 256 + b;
      }
      header += count;
    }
    const end = offset + header + length;
    if (end > bytes.length) return undefined;
    out.push(bytes.subarray(offset, end));
    offset = end;
  }
  return out;
}

/** Concatenates DER values. */
export function concatDer(parts: readonly Uint8Array[]): Uint8Array {
  return Buffer.concat(parts);
}

/**
 * Decodes one DER certificate whose public key loads and has a JWK form. OpenSSL decodes the key
 * lazily, so a certificate with a corrupt key would otherwise parse and fail later, when it is
 * marshalled into a bundle or compared with a private key.
 *
 * @throws Error (from node:crypto) when the certificate or its key does not decode.
 */
export function decodeCertificate(der: Uint8Array): X509Certificate {
  const cert = new X509Certificate(der);
  cert.publicKey.export({ format: 'jwk' });
  return cert;
}

/** Parses concatenated DER certificates; undefined when any value is not a usable certificate. */
export function parseDerCertificates(bytes: Uint8Array): X509Certificate[] | undefined {
  const parts = splitDer(bytes);
  if (parts === undefined) return undefined;
  try {
    return parts.map(decodeCertificate);
  } catch {
    return undefined;
  }
}

const PEM_BLOCK = /-----BEGIN ([A-Z0-9 ]+)-----([^-]*)-----END \1-----/g;

/** The PEM blocks of `text` with their labels, in order. */
export function pemBlocks(text: string): { label: string; der: Uint8Array }[] {
  return [...text.matchAll(PEM_BLOCK)].map((m) => ({
    label: m[1] ?? '',
    der: Buffer.from((m[2] ?? '').replace(/\s+/g, ''), 'base64'),
  }));
}

/** PEM text for one DER value. */
export function toPem(label: string, der: Uint8Array): string {
  const b64 = Buffer.from(der).toString('base64');
  return `-----BEGIN ${label}-----\n${b64.replace(/(.{64})/g, '$1\n').replace(/\n$/, '')}\n-----END ${label}-----\n`;
}
