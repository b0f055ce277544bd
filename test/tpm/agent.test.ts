import { verify, X509Certificate } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  activateCredential,
  createAk,
  type Ek,
  type EkKind,
  ecdsaP1363,
  highRangeBranches,
  loadEk,
  objectName,
  parseTpm2ToolsCredential,
  passwordSession,
  pcrSelection,
  policyA,
  policyB,
  policySession,
  publicKeyFromArea,
  quotePcrs,
  readEkCertificates,
  readPcrs,
  releaseEk,
  TPM_ALG,
  TPM_HT,
  TPM_RH,
  TPM_SE,
  Tpm,
  TpmResponseError,
  TpmWriter,
  withAk,
  withEk,
} from '../../src/tpm/index.js';
import { type Swtpm, startSwtpm } from '../helpers/swtpm.js';
import { tpm2 } from '../helpers/tpm2-tools.js';

let swtpm: Swtpm;
let tpm: Tpm;
const file = (name: string): string => join(swtpm.dir, name);
const hex = (b: Uint8Array): string => Buffer.from(b).toString('hex');

beforeAll(async () => {
  swtpm = await startSwtpm();
  tpm = await Tpm.open(swtpm.tcti);
});

afterAll(async () => {
  await tpm?.close();
  await swtpm?.stop();
});

/** Writes `ek`'s public area as TPM2B_PUBLIC and has tpm2_makecredential seal `secret` to (ek, name). */
async function makeCredential(ek: Ek, akName: Uint8Array, secret: string, tag: string) {
  await writeFile(file(`${tag}.ekpub`), new TpmWriter().tpm2b(ek.public.raw).finish());
  await writeFile(file(`${tag}.secret`), secret);
  await tpm2(
    'tpm2_makecredential',
    ['-u', file(`${tag}.ekpub`), '-s', file(`${tag}.secret`), '-n', hex(akName), '-o', file(`${tag}.cred`)],
    'none',
  );
  return parseTpm2ToolsCredential(new Uint8Array(await readFile(file(`${tag}.cred`))));
}

describe('transport and basic commands', () => {
  it('gets random bytes through the swtpm TCTI', async () => {
    const a = await tpm.getRandom(16);
    const b = await tpm.getRandom(16);
    expect(a.byteLength).toBe(16);
    expect(hex(a)).not.toBe(hex(b));
  });

  it('reports the single active sha256 bank swtpm_setup allocates', async () => {
    const banks = await tpm.getPcrBanks();
    const active = banks.filter((b) => b.pcrs.length > 0).map((b) => b.hash);
    expect(active).toEqual([TPM_ALG.SHA256]);
  });
});

describe('EK certificates', () => {
  it('reads the RSA and P-384 certificates, byte for byte what tpm2_nvread returns', async () => {
    const certs = await readEkCertificates(tpm);
    expect(certs.map((c) => [c.index, c.kind])).toEqual([
      [0x01c00002, 'rsa2048'],
      [0x01c00016, 'ecc-p384-high'],
    ]);
    for (const cert of certs) {
      const out = file(`nv-${cert.index.toString(16)}`);
      await tpm2(
        'tpm2_nvread',
        [`0x${cert.index.toString(16)}`, '-C', `0x${cert.index.toString(16)}`, '-o', out],
        swtpm.tcti,
      );
      expect(hex(cert.raw)).toBe(hex(new Uint8Array(await readFile(out))));
      const x509 = new X509Certificate(cert.der);
      expect(x509.issuer).toContain('CN=swtpm-localca');
      expect(x509.checkIssued(new X509Certificate(await readFile(swtpm.ekIssuerCertPath)))).toBe(true);
    }
  });

  it('reads an owner-read-only certificate larger than TPM_PT_NV_BUFFER_MAX and strips its padding', async () => {
    // 1500 bytes: two NV_Read chunks on swtpm (NV_BUFFER_MAX 1024); readable by the owner only.
    const [rsa] = await readEkCertificates(tpm);
    expect(rsa).toBeDefined();
    if (!rsa) return;
    const padded = Buffer.concat([rsa.der, Buffer.alloc(1500 - rsa.der.byteLength, 0xff)]);
    await writeFile(file('owner-cert'), padded);
    await tpm2(
      'tpm2_nvdefine',
      ['0x01c00014', '-C', 'o', '-s', '1500', '-a', 'ownerread|ownerwrite'],
      swtpm.tcti,
    );
    try {
      await tpm2('tpm2_nvwrite', ['0x01c00014', '-C', 'o', '-i', file('owner-cert')], swtpm.tcti);
      const cert = (await readEkCertificates(tpm)).find((c) => c.index === 0x01c00014);
      expect(cert?.kind).toBe('ecc-p256-high');
      expect(hex(cert?.raw ?? new Uint8Array())).toBe(padded.toString('hex'));
      expect(hex(cert?.der ?? new Uint8Array())).toBe(hex(rsa.der));
    } finally {
      await tpm2('tpm2_nvundefine', ['0x01c00014', '-C', 'o'], swtpm.tcti);
    }
  });

  it.each<[EkKind, number]>([
    ['rsa2048', 0x01c00002],
    ['ecc-p384-high', 0x01c00016],
  ])('certifies the public key of the %s EK', async (kind, index) => {
    const cert = (await readEkCertificates(tpm)).find((c) => c.index === index);
    expect(cert).toBeDefined();
    if (!cert) return;
    await withEk(tpm, kind, async (ek) => {
      const certKey = new X509Certificate(cert.der).publicKey.export({ format: 'der', type: 'spki' });
      const ekKey = publicKeyFromArea(ek.public.area).export({ format: 'der', type: 'spki' });
      expect(hex(certKey)).toBe(hex(ekKey));
    });
  });
});

describe('EKs', () => {
  it('builds the high-range PolicyB values the EK Credential Profile publishes', () => {
    expect(hex(policyB(TPM_ALG.SHA256))).toBe(
      'ca3d0a99a2b93906f7a3342414efcfb3a385d44cd1fd459089d19b5071c0b7a0',
    );
    expect(hex(policyB(TPM_ALG.SHA384))).toBe(
      'b26e7d28d11a50bc53d882bcf5fd3a1a074148bb35d3b4e4cb1c0ad9bde419cacb47ba09699646150f9fc000f3f80e12',
    );
  });

  it.each<[EkKind, number]>([
    ['rsa2048', 0x81010001],
    ['ecc-p384-high', 0x81010016],
  ])('uses the persistent %s EK, and its template recreates that same key', async (kind, handle) => {
    const ek = await loadEk(tpm, kind);
    expect(ek.transient).toBe(false);
    expect(ek.handle).toBe(handle);
    const created = await tpm.createPrimary(TPM_RH.ENDORSEMENT, ek.profile.template);
    try {
      expect(hex(created.name)).toBe(hex(ek.name));
    } finally {
      await tpm.flushContext(created.handle);
    }
  });

  it('creates a transient EK for a template with no persistent key (ECC P-256) and flushes it', async () => {
    const ek = await loadEk(tpm, 'ecc-p256');
    expect(ek.transient).toBe(true);
    expect(ek.handle >>> 24).toBe(TPM_HT.TRANSIENT);
    await releaseEk(tpm, ek);
    expect(await tpm.getHandles(TPM_HT.TRANSIENT)).toEqual([]);
  });
});

describe('AK and credential activation', () => {
  it.each<[EkKind, 'rsa2048' | 'ecc-p256']>([
    ['rsa2048', 'rsa2048'],
    ['ecc-p384-high', 'ecc-p256'],
    ['ecc-p256', 'rsa2048'],
  ])('recovers a tpm2_makecredential secret with the %s EK and a %s AK', async (kind, alg) => {
    await withEk(tpm, kind, async (ek) => {
      const ak = await createAk(tpm, ek, alg);
      expect(ak.public.area.objectAttributes).toMatchObject({
        fixedTPM: true,
        fixedParent: true,
        sensitiveDataOrigin: true,
        userWithAuth: true,
        restricted: true,
        sign: true,
        decrypt: false,
      });
      const challenge = await makeCredential(ek, ak.name, 'the-secret-value', `${kind}-${alg}`);
      const secret = await withAk(tpm, ek, ak, async (loaded) => {
        expect(hex(loaded.name)).toBe(hex(objectName(ak.public)));
        return activateCredential(tpm, ek, loaded, challenge);
      });
      expect(Buffer.from(secret).toString()).toBe('the-secret-value');
    });
  });

  it('names the TPM error when the credential was made for another AK', async () => {
    await withEk(tpm, 'rsa2048', async (ek) => {
      const ak = await createAk(tpm, ek, 'ecc-p256');
      const other = await createAk(tpm, ek, 'ecc-p256');
      const challenge = await makeCredential(ek, other.name, 'not-for-you', 'other-ak');
      const error = await withAk(tpm, ek, ak, (loaded) =>
        activateCredential(tpm, ek, loaded, challenge),
      ).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(TpmResponseError);
      expect((error as TpmResponseError).rcName).toBe('TPM_RC_INTEGRITY');
      expect((error as TpmResponseError).message).toMatch(
        /^TPM2_ActivateCredential failed: TPM_RC_INTEGRITY \(parameter 1\)/,
      );
    });
  });

  it('fails with TPM_RC_POLICY_FAIL (session 2) when the high-range EK gets PolicySecret without PolicyOR', async () => {
    await withEk(tpm, 'ecc-p384-high', async (ek) => {
      const ak = await createAk(tpm, ek, 'ecc-p256');
      const challenge = await makeCredential(ek, ak.name, 'needs-policy-or', 'policy-fail');
      const error = await withAk(tpm, ek, ak, async (loaded) => {
        const session = await tpm.startAuthSession(TPM_SE.POLICY, ek.public.area.nameAlg);
        try {
          await tpm.policySecret(TPM_RH.ENDORSEMENT, passwordSession(), session);
          return await tpm.activateCredential(
            loaded.handle,
            passwordSession(),
            ek.handle,
            policySession(session),
            challenge.credentialBlob,
            challenge.secret,
          );
        } finally {
          await tpm.flushContext(session);
        }
      }).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(TpmResponseError);
      expect((error as TpmResponseError).message).toContain('TPM_RC_POLICY_FAIL (session 2)');
    });
  });

  it('names a wrong password as TPM_RC_BAD_AUTH (session 1)', async () => {
    const error = await tpm
      .nvRead(0x01c00002, 16, { auth: passwordSession('wrong password') })
      .catch((e: unknown) => e);
    expect(error).toBeInstanceOf(TpmResponseError);
    expect((error as TpmResponseError).rcName).toBe('TPM_RC_BAD_AUTH');
    expect((error as TpmResponseError).location).toEqual({ kind: 'session', index: 1 });
    expect((error as TpmResponseError).message).toContain('TPM_RC_BAD_AUTH (session 1)');
  });
});

describe('PCRs and quotes', () => {
  beforeAll(async () => {
    // Give the PCRs distinct values so comparisons cannot pass on all-zero registers.
    for (const pcr of [0, 1, 7, 9, 16, 23]) {
      await tpm2(
        'tpm2_pcrextend',
        [`${pcr}:sha256=${pcr.toString(16).padStart(2, '0').repeat(32)}`],
        swtpm.tcti,
      );
    }
  });

  it('reads all 24 sha256 PCRs (several PCR_Read calls) equal to tpm2_pcrread', async () => {
    const all = Array.from({ length: 24 }, (_, i) => i);
    const [bank] = await readPcrs(tpm, [pcrSelection(TPM_ALG.SHA256, all)]);
    const out = await tpm2('tpm2_pcrread', ['sha256'], swtpm.tcti);
    const expected = new Map(
      [...out.matchAll(/^\s+(\d+)\s*: 0x([0-9A-F]+)$/gm)].map((m) => [
        Number(m[1]),
        (m[2] ?? '').toLowerCase(),
      ]),
    );
    expect(expected.size).toBe(24);
    expect(bank?.values.size).toBe(24);
    for (const [pcr, value] of bank?.values ?? []) expect(hex(value), `PCR ${pcr}`).toBe(expected.get(pcr));
    expect(hex(bank?.values.get(7) ?? new Uint8Array())).not.toBe('00'.repeat(32));
  });

  it.each(['rsa2048', 'ecc-p256'] as const)(
    'produces a %s quote that tpm2_checkquote accepts, and rejects with a wrong nonce',
    async (alg) => {
      await withEk(tpm, 'rsa2048', async (ek) => {
        const ak = await createAk(tpm, ek, alg);
        const nonce = Uint8Array.from(Buffer.from('c0ffee00112233445566778899aabbcc', 'hex'));
        const selection = [pcrSelection(TPM_ALG.SHA256, [0, 1, 7, 9, 16, 23])];
        const quote = await withAk(tpm, ek, ak, (loaded) => quotePcrs(tpm, loaded, nonce, selection));
        expect(hex(quote.attest.extraData)).toBe(hex(nonce));
        const tag = `quote-${alg}`;
        await writeFile(file(`${tag}.msg`), quote.attestBytes);
        await writeFile(file(`${tag}.sig`), quote.signatureBytes);
        await writeFile(
          file(`${tag}.pem`),
          publicKeyFromArea(ak.public.area).export({ format: 'pem', type: 'spki' }),
        );
        await writeFile(file(`${tag}.pcrs`), Buffer.concat([...(quote.pcrs[0]?.values.values() ?? [])]));
        const args = (q: string) => [
          ...['-u', file(`${tag}.pem`), '-m', file(`${tag}.msg`), '-s', file(`${tag}.sig`)],
          ...['-f', file(`${tag}.pcrs`), '-l', 'sha256:0,1,7,9,16,23', '-g', 'sha256', '-q', q],
        ];
        await tpm2('tpm2_checkquote', args(hex(nonce)), null);
        await expect(tpm2('tpm2_checkquote', args('c0ffee00112233445566778899aabbcd'), null)).rejects.toThrow(
          /nonce/i,
        );
      });
    },
  );

  it('returns PCR values that hash to the digest of a quote over all 24 PCRs', async () => {
    await withEk(tpm, 'rsa2048', async (ek) => {
      const ak = await createAk(tpm, ek, 'ecc-p256');
      const all = Array.from({ length: 24 }, (_, i) => i);
      const quote = await withAk(tpm, ek, ak, (loaded) =>
        quotePcrs(tpm, loaded, new Uint8Array(8), [pcrSelection(TPM_ALG.SHA256, all)]),
      );
      expect(quote.pcrs[0]?.values.size).toBe(24);
      expect(quote.attest.attested.kind === 'quote' && quote.attest.attested.pcrSelect[0]?.pcrs).toEqual(all);
    });
  });
});

describe('other commands', () => {
  it('leaves the session digest at PolicyB after PolicySecret and PolicyOR for the P-384 EK', async () => {
    await withEk(tpm, 'ecc-p384-high', async (ek) => {
      const session = await tpm.startAuthSession(TPM_SE.POLICY, TPM_ALG.SHA384);
      try {
        await tpm.policySecret(TPM_RH.ENDORSEMENT, passwordSession(), session);
        expect(hex(await tpm.policyGetDigest(session))).toBe(hex(policyA(TPM_ALG.SHA384)));
        await tpm.policyOr(session, highRangeBranches(TPM_ALG.SHA384));
        const digest = await tpm.policyGetDigest(session);
        expect(hex(digest)).toBe(hex(policyB(TPM_ALG.SHA384)));
        expect(hex(digest)).toBe(hex(ek.public.area.authPolicy));
      } finally {
        await tpm.flushContext(session);
      }
    });
  });

  it('certifies one AK with another; the attestation names it and verifies with the signer', async () => {
    await withEk(tpm, 'rsa2048', async (ek) => {
      const subject = await createAk(tpm, ek, 'ecc-p256');
      const signer = await createAk(tpm, ek, 'ecc-p256');
      const result = await withAk(tpm, ek, subject, (s) =>
        withAk(tpm, ek, signer, (k) =>
          tpm.certify(s.handle, passwordSession(), k.handle, passwordSession(), Uint8Array.of(1, 2, 3)),
        ),
      );
      expect(result.attest.attested.kind).toBe('certify');
      if (result.attest.attested.kind !== 'certify') return;
      expect(hex(result.attest.attested.name)).toBe(hex(subject.name));
      expect(hex(result.attest.extraData)).toBe('010203');
      expect(result.signature.sigAlg).toBe(TPM_ALG.ECDSA);
      if (result.signature.sigAlg !== TPM_ALG.ECDSA) return;
      const key = publicKeyFromArea(signer.public.area);
      const sig = ecdsaP1363(result.signature, 32);
      expect(verify('sha256', result.attestBytes, { key, dsaEncoding: 'ieee-p1363' }, sig)).toBe(true);
    });
  });

  it('persists a key with EvictControl and removes it again', async () => {
    const handle = 0x81000100;
    const ek = await loadEk(tpm, 'ecc-p256');
    try {
      await tpm.evictControl(TPM_RH.OWNER, passwordSession(), ek.handle, handle);
    } finally {
      await releaseEk(tpm, ek);
    }
    expect(await tpm.getHandles(TPM_HT.PERSISTENT)).toContain(handle);
    expect(hex((await tpm.readPublic(handle)).name)).toBe(hex(ek.name));
    await tpm.evictControl(TPM_RH.OWNER, passwordSession(), handle, handle);
    expect(await tpm.getHandles(TPM_HT.PERSISTENT)).not.toContain(handle);
  });
});

describe('handle hygiene', () => {
  it('leaves no transient objects or sessions behind after everything above, failures included', async () => {
    expect(await tpm.getHandles(TPM_HT.TRANSIENT)).toEqual([]);
    expect(await tpm.getHandles(TPM_HT.LOADED_SESSION)).toEqual([]);
    expect(await tpm.getHandles(TPM_HT.POLICY_SESSION)).toEqual([]);
  });
});
