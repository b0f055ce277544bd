import { randomBytes, timingSafeEqual, type X509Certificate } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  activateCredential,
  checkAkPublic,
  checkEkCertificateKey,
  createAk,
  type EkKind,
  ekCertificateTpmInfo,
  ekPublicKeyHash,
  makeCredential,
  objectName,
  parseCertificateBundle,
  parseEkCertificate,
  pcrSelection,
  quotePcrs,
  readEkCertificates,
  TPM_ALG,
  Tpm,
  verifyEkCertificateChain,
  verifyQuote,
  withAk,
  withEk,
} from '../../../src/tpm/index.js';
import { type Swtpm, startSwtpm } from '../../helpers/swtpm.js';

// The attestation handshake of ARCHITECTURE.md, steps 2 to 5, with ironroot's own agent side
// (TCTI transport to swtpm) on one end and the verifier on the other: the two halves must agree.

let swtpm: Swtpm;
let tpm: Tpm;
let roots: X509Certificate[];
let intermediates: X509Certificate[];

beforeAll(async () => {
  swtpm = await startSwtpm();
  tpm = await Tpm.open(swtpm.tcti);
  roots = parseCertificateBundle(await readFile(swtpm.ekRootCertPath, 'utf8'), 'root');
  intermediates = parseCertificateBundle(await readFile(swtpm.ekIssuerCertPath, 'utf8'), 'issuer');
});

afterAll(async () => {
  await tpm?.close();
  await swtpm?.stop();
});

describe.each<[EkKind, 'rsa2048' | 'ecc-p256']>([
  ['rsa2048', 'rsa2048'],
  ['ecc-p384-high', 'ecc-p256'],
])('handshake with the %s EK and a %s AK', (kind, akAlgorithm) => {
  it('enrols: EK certificate trusted, AK bound by activation, quote verified', async () => {
    await withEk(tpm, kind, async (ek) => {
      // Agent: EK certificate, EK public, a fresh AK.
      const certs = await readEkCertificates(tpm);
      const ekCertBytes = certs.find((c) => c.kind === kind)?.raw;
      if (ekCertBytes === undefined) throw new Error(`no ${kind} EK certificate in NV`);
      const ak = await createAk(tpm, ek, akAlgorithm);

      // Verifier: EK certificate, EK key, AK attributes, then the challenge.
      const cert = parseEkCertificate(ekCertBytes);
      expect(verifyEkCertificateChain(cert, { roots, intermediates })).toHaveLength(3);
      checkEkCertificateKey(cert, ek.public.area);
      expect(ekCertificateTpmInfo(cert).model).toBe('swtpm');
      expect(ekPublicKeyHash(ek.public.area)).toMatch(/^[0-9a-f]{64}$/);
      checkAkPublic(ak.public.area);
      const akName = objectName(ak.public);
      const secret = randomBytes(32);
      const challenge = makeCredential(ek.public.area, akName, secret);
      const nonce = randomBytes(32);
      const selection = [pcrSelection(TPM_ALG.SHA256, [0, 1, 2, 3, 4, 5, 6, 7])];

      // Agent: activation, then the quote.
      const { recovered, quote } = await withAk(tpm, ek, ak, async (loaded) => ({
        recovered: await activateCredential(tpm, ek, loaded, challenge),
        quote: await quotePcrs(tpm, loaded, nonce, selection),
      }));

      // Verifier: secret, then quote.
      expect(recovered.length === secret.length && timingSafeEqual(recovered, secret)).toBe(true);
      const verified = verifyQuote({
        akPublic: ak.public.area,
        attest: quote.attestBytes,
        signature: quote.signatureBytes,
        nonce,
        pcrSelection: selection,
        pcrValues: quote.pcrs.flatMap((bank) => [...bank.values.values()]),
      });
      expect(verified.pcrs).toHaveLength(8);
      expect(verified.clockInfo.safe).toBe(true);
    });
  });
});
