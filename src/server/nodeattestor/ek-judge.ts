/**
 * The part of EK admission that reads the agent's certificates: both X.509 parsers, the key match,
 * the TCG subjectAltName, and the chain to the configured EK CAs. It is all an unauthenticated peer
 * can make the server compute, so it runs in the EK worker (ek-worker.ts), never on the thread that
 * serves the admin API and other agents; its input and output are plain data for that reason.
 *
 * @module
 */
import type { X509Certificate } from 'node:crypto';
import {
  checkEkCertificateKey,
  ekCertificateTpmInfo,
  parseEkCertificate,
  parseTpm2bPublic,
  type TpmDeviceInfo,
  TpmError,
  verifyEkCertificateChain,
} from '../../tpm/index.js';
import { AttestationError, type AttestationErrorCode } from './errors.js';

/** Maps a library error to its attestation code; anything else propagates unchanged. */
export function wrapTpm(error: unknown, map: Partial<Record<string, AttestationErrorCode>>): never {
  if (error instanceof TpmError) {
    const code =
      map[error.code] ?? (error.code === 'ERR_TPM_MALFORMED' ? 'ERR_ATTEST_BAD_REQUEST' : undefined);
    if (code !== undefined) throw new AttestationError(code, error.message, { cause: error });
  }
  throw error;
}

/** One EK's certificates to judge: bytes as the agent sent them, already within the size caps. */
export interface EkJob {
  /** The EK's TPM2B_PUBLIC, which admission has already decoded once. */
  readonly ekPublic: Uint8Array;
  /** The EK certificate, then the CA certificates sent with it. */
  readonly certificates: readonly Uint8Array[];
  /** Whether the chain to the configured EK CAs must be verified (the EK is not allow-listed). */
  readonly chain: boolean;
  /** Milliseconds since the epoch: the time certificates must be valid at. */
  readonly at: number;
}

export interface EkJudgement {
  /** Issuer of the EK certificate, one line. */
  readonly issuer: string;
  readonly device: TpmDeviceInfo | undefined;
}

/** The configured EK CAs, as the worker holds them. */
export interface EkTrust {
  readonly roots: readonly X509Certificate[];
  readonly intermediates: readonly X509Certificate[];
}

/** Parses a certificate the agent sent; one that either X.509 parser refuses is invalid evidence. */
function agentCertificate(bytes: Uint8Array): X509Certificate {
  try {
    return parseEkCertificate(bytes);
  } catch (error) {
    wrapTpm(error, { ERR_TPM_MALFORMED: 'ERR_ATTEST_EK_INVALID' });
  }
}

/**
 * Judges the EK certificate: it must decode, certify this EK public area and, when `job.chain`,
 * chain to `trust`. Refuses with the same AttestationError codes admission always used.
 */
export function judgeEkCertificates(job: EkJob, trust: EkTrust): EkJudgement {
  const [leafBytes, ...chainBytes] = job.certificates;
  if (leafBytes === undefined)
    throw new AttestationError('ERR_ATTEST_BAD_REQUEST', 'no EK certificate to judge');
  const cert = agentCertificate(leafBytes);
  try {
    checkEkCertificateKey(cert, parseTpm2bPublic(job.ekPublic).area);
  } catch (error) {
    wrapTpm(error, { ERR_TPM_EK_MISMATCH: 'ERR_ATTEST_EK_MISMATCH' });
  }
  let device: TpmDeviceInfo | undefined;
  try {
    device = ekCertificateTpmInfo(cert);
  } catch {
    // A certificate without the TCG SAN still identifies the EK; the node just gets no
    // manufacturer/model selectors.
    device = undefined;
  }
  const issuer = cert.issuer.replaceAll('\n', ', ');
  if (!job.chain) return { issuer, device };
  const presented = chainBytes.map((b) => agentCertificate(b));
  try {
    verifyEkCertificateChain(cert, { ...trust, presented }, new Date(job.at));
    return { issuer, device };
  } catch (error) {
    wrapTpm(error, {
      ERR_TPM_EK_UNTRUSTED: 'ERR_ATTEST_EK_UNTRUSTED',
      ERR_TPM_EK_CHAIN_LIMIT: 'ERR_ATTEST_EK_CHAIN_LIMIT',
      ERR_TPM_MALFORMED: 'ERR_ATTEST_EK_INVALID',
    });
  }
}
