/**
 * What the parser fuzzer found, each pinned with its minimal input so it stays fixed. (JWT date
 * range and audience/size limits, and the SPIFFE bundle key check, have their tests beside the
 * other JWT-SVID and bundle rules in test/spiffe.)
 */
import { webcrypto } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { parseCsr } from '../../src/spiffe/csr.js';
import { createKeySigner } from '../../src/spiffe/key-signer.js';
import { newKeyPair } from '../../src/spiffe/new-key-pair.js';
import * as px from '../../src/spiffe/peculiar.js';
import { SpiffeId } from '../../src/spiffe/spiffe-id.js';
import { TrustDomain } from '../../src/spiffe/trust-domain.js';
import { mintX509Ca, mintX509Svid } from '../../src/spiffe/x509-mint.js';
import { X509Svid } from '../../src/spiffe/x509-svid.js';
import { TpmError } from '../../src/tpm/errors.js';
import {
  ekCertificateTpmInfo,
  parseCertificateBundle,
  parseEkCertificate,
} from '../../src/tpm/verify/ek-certificate.js';
import { expectSpiffeError, expectSpiffeRejection } from '../helpers/spiffe-errors.js';
import { craft, p256, withUndecodableKey } from '../helpers/x509.js';

function tpmCode(fn: () => unknown): string {
  try {
    fn();
  } catch (error) {
    return error instanceof TpmError ? error.code : `not a TpmError: ${String(error)}`;
  }
  return 'nothing thrown';
}

const notBefore = new Date(Date.now() - 60_000);
const notAfter = new Date(Date.now() + 3_600_000);

describe('fuzz findings', () => {
  it('X509Svid.parseDer/parsePem: a leaf whose key does not decode is ERR_X509SVID_PARSE, not an OpenSSL error', async () => {
    const ca = p256();
    const td = TrustDomain.parse('example.org');
    const caCert = await mintX509Ca(
      { trustDomain: td, publicKey: ca.publicKey, notBefore, notAfter },
      ca.signer,
    );
    const leafKeys = newKeyPair('ec', { namedCurve: 'P-256' });
    const leaf = await mintX509Svid(
      {
        spiffeId: SpiffeId.parse('spiffe://example.org/web'),
        publicKey: leafKeys.publicKey,
        notBefore,
        notAfter,
      },
      { certificate: caCert, signer: createKeySigner(ca.privateKey) },
    );
    const bad = withUndecodableKey(leaf);
    const key = leafKeys.privateKey.export({ type: 'pkcs8', format: 'der' });
    expectSpiffeError(() => X509Svid.parseDer(bad, key), 'ERR_X509SVID_PARSE', /not concatenated DER/);
    const pem = `-----BEGIN CERTIFICATE-----\n${bad.toString('base64')}\n-----END CERTIFICATE-----\n`;
    const keyPem = leafKeys.privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
    expectSpiffeError(() => X509Svid.parsePem(pem, keyPem), 'ERR_X509SVID_PARSE', /not a certificate/);
  });

  it('parseEkCertificate: a certificate whose key does not decode is ERR_TPM_MALFORMED', async () => {
    const k = p256();
    const cert = await craft({
      subject: 'CN=ek',
      publicKey: k.publicKey,
      selfKey: k.privateKey,
      extensions: [],
    });
    expect(tpmCode(() => parseEkCertificate(withUndecodableKey(cert)))).toBe('ERR_TPM_MALFORMED');
  });

  it('ekCertificateTpmInfo: a subjectAltName that does not decode is ERR_TPM_MALFORMED, not an ASN.1 error', async () => {
    const k = p256();
    // The fuzzer's minimal case: a SAN extension whose value is not a GeneralNames sequence.
    const san = new px.Extension('2.5.29.17', true, new Uint8Array([0x04, 0x01, 0x00]));
    const cert = await craft({
      subject: 'CN=ek',
      publicKey: k.publicKey,
      selfKey: k.privateKey,
      extensions: [san],
    });
    expect(tpmCode(() => ekCertificateTpmInfo(cert))).toBe('ERR_TPM_MALFORMED');
  });

  it('parseEkCertificate: a date the strict DER reader cannot read (OpenSSL can) is ERR_TPM_MALFORMED, before chain building meets it', async () => {
    const k = p256();
    const cert = await craft({
      subject: 'CN=intermediate',
      publicKey: k.publicKey,
      selfKey: k.privateKey,
      extensions: [],
      notAfter: new Date('2060-01-01T00:00:00Z'),
    });
    // The fuzzer's case: notAfter's GeneralizedTime with its first digit replaced by a NUL byte.
    const der = Buffer.from(cert.raw);
    const at = der.indexOf(Buffer.from('20600101000000Z'));
    expect(at).toBeGreaterThan(0);
    der[at] = 0;
    expect(tpmCode(() => parseEkCertificate(der))).toBe('ERR_TPM_MALFORMED');
  });

  it('parseCertificateBundle: no certificate, or one whose key does not decode, is ERR_TPM_MALFORMED', async () => {
    expect(tpmCode(() => parseCertificateBundle('', 'ek-ca.pem'))).toBe('ERR_TPM_MALFORMED');
    const k = p256();
    const cert = await craft({
      subject: 'CN=root',
      publicKey: k.publicKey,
      selfKey: k.privateKey,
      extensions: [],
    });
    const pem = `-----BEGIN CERTIFICATE-----\n${withUndecodableKey(cert).toString('base64')}\n-----END CERTIFICATE-----\n`;
    expect(tpmCode(() => parseCertificateBundle(pem, 'ek-ca.pem'))).toBe('ERR_TPM_MALFORMED');
    expect(parseCertificateBundle(cert.toString(), 'ek-ca.pem')).toHaveLength(1);
  });

  it('parseCsr: a signed CSR with an extension that does not decode is ERR_CSR_PARSE, not an ASN.1 error', async () => {
    const keys = await webcrypto.subtle.generateKey({ name: 'ECDSA', namedCurve: 'P-256' }, true, [
      'sign',
      'verify',
    ]);
    // The fuzzer's minimal case: a basicConstraints extension with an empty value.
    const csr = await px.Pkcs10CertificateRequestGenerator.create(
      {
        name: '',
        keys,
        signingAlgorithm: { name: 'ECDSA', hash: 'SHA-256' },
        extensions: [new px.Extension('2.5.29.19', false, new Uint8Array())],
      },
      webcrypto,
    );
    await expectSpiffeRejection(parseCsr(new Uint8Array(csr.rawData)), 'ERR_CSR_PARSE', /does not decode/);
  });
});
