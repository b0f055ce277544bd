import { execFile } from 'node:child_process';

import { promisify } from 'node:util';
import { afterAll, describe, expect, it } from 'vitest';
import { createCsr, parseCsr } from '../../src/spiffe/csr.js';
import { toPem } from '../../src/spiffe/der.js';
import { createKeySigner } from '../../src/spiffe/key-signer.js';
import { newKeyPair } from '../../src/spiffe/new-key-pair.js';
import { SpiffeId } from '../../src/spiffe/spiffe-id.js';
import { expectSpiffeRejection } from '../helpers/spiffe-errors.js';
import { p256, px, tempDir } from '../helpers/x509.js';

const run = promisify(execFile);
const id = SpiffeId.parse('spiffe://example.org/agent/tpm/abc');
const tmp = tempDir();
afterAll(() => tmp.cleanup());

/** A CSR signed by Node's WebCrypto with arbitrary SANs, independent of createCsr. */
async function craftCsr(names: px.JsonGeneralName[]): Promise<Uint8Array> {
  const keys = await crypto.subtle.generateKey({ name: 'ECDSA', namedCurve: 'P-256' }, false, [
    'sign',
    'verify',
  ]);
  const csr = await px.Pkcs10CertificateRequestGenerator.create(
    {
      keys,
      signingAlgorithm: { name: 'ECDSA', hash: 'SHA-256' },
      extensions: [new px.SubjectAlternativeNameExtension(names)],
    },
    crypto,
  );
  return new Uint8Array(csr.rawData);
}

describe('createCsr / parseCsr', () => {
  it('builds a CSR that openssl verifies and that carries the SPIFFE ID URI SAN', async () => {
    const key = p256();
    const der = await createCsr({ spiffeId: id, dnsNames: ['node1.example.org'] }, key.signer);
    const path = tmp.write('req.pem', toPem('CERTIFICATE REQUEST', der));
    const { stdout, stderr } = await run('openssl', ['req', '-in', path, '-noout', '-verify', '-text']);
    expect(stdout + stderr).toMatch(/verify OK/i);
    expect(stdout).toMatch(/URI:spiffe:\/\/example\.org\/agent\/tpm\/abc, DNS:node1\.example\.org/);
    const parsed = await parseCsr(der);
    expect(parsed.spiffeId.equals(id)).toBe(true);
    expect(parsed.dnsNames).toEqual(['node1.example.org']);
    expect(parsed.publicKey.equals(key.publicKey)).toBe(true);
  });

  it('parses PEM and RSA-signed CSRs', async () => {
    const rsa = newKeyPair('rsa', { modulusLength: 2048 });
    const der = await createCsr({ spiffeId: id }, createKeySigner(rsa.privateKey, 'RS256'));
    expect((await parseCsr(toPem('CERTIFICATE REQUEST', der))).publicKey.equals(rsa.publicKey)).toBe(true);
  });

  it('refuses to request an ID over 2048 bytes (ID-18)', async () => {
    const long = SpiffeId.parse(`spiffe://example.org/${'a'.repeat(2100)}`);
    await expectSpiffeRejection(
      createCsr({ spiffeId: long }, p256().signer),
      'ERR_SPIFFEID_TOO_LONG',
      /§2\.3/,
    );
  });

  it('rejects garbage', async () => {
    await expectSpiffeRejection(parseCsr(new Uint8Array([1, 2, 3])), 'ERR_CSR_PARSE', /PKCS#10/);
  });

  it('rejects a CSR whose signature does not verify', async () => {
    const der = Buffer.from(await createCsr({ spiffeId: id }, p256().signer));
    // Flip a bit in the last byte of the signature.
    der[der.length - 1] = (der[der.length - 1] ?? 0) ^ 1;
    await expectSpiffeRejection(parseCsr(der), 'ERR_CSR_BAD_SIGNATURE', /does not verify/);
  });

  it('rejects a CSR without a URI SAN, or with two', async () => {
    await expectSpiffeRejection(
      parseCsr(await craftCsr([{ type: 'dns', value: 'a.b' }])),
      'ERR_CSR_NO_URI_SAN',
      /one URI SAN/,
    );
    const two = await craftCsr([
      { type: 'url', value: id.toString() },
      { type: 'url', value: 'spiffe://example.org/x' },
    ]);
    await expectSpiffeRejection(parseCsr(two), 'ERR_CSR_MULTIPLE_URI_SANS', /2 URI SANs/);
  });

  it('rejects a DNS SAN that is not ASCII, naming it', async () => {
    const bad = await craftCsr([
      { type: 'url', value: id.toString() },
      { type: 'dns', value: 'bücher.example' },
    ]);
    await expectSpiffeRejection(parseCsr(bad), 'ERR_CSR_PARSE', /"bücher\.example", which is not ASCII/);
  });

  it('rejects a URI SAN that is not a SPIFFE ID', async () => {
    const bad = await craftCsr([{ type: 'url', value: 'spiffe://example.org/a/../b' }]);
    await expectSpiffeRejection(parseCsr(bad), 'ERR_SPIFFEID_DOT_SEGMENT', /dot segment/);
  });
});
