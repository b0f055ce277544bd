import { createHash, verify } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  ecdsaP1363,
  encodeObjectAttributes,
  hashName,
  marshalAttest,
  marshalNvPublic,
  marshalPcrSelections,
  marshalSignature,
  marshalTpm2bPublic,
  marshalTpm2ToolsCredential,
  nvName,
  objectName,
  parseAttest,
  parseIdObject,
  parsePcrSelections,
  parseSignature,
  parseTpm2bPublic,
  parseTpm2ToolsCredential,
  pcrSelection,
  publicKeyFromArea,
  TPM_ALG,
  TPM_ECC,
  TPM_GENERATED_VALUE,
  TPM_ST,
  TpmError,
  TpmReader,
} from '../../src/tpm/index.js';
import { type Swtpm, startSwtpm } from '../helpers/swtpm.js';
import { tpm2 } from '../helpers/tpm2-tools.js';

let tpm: Swtpm;
const file = (name: string): string => join(tpm.dir, name);
const read = async (name: string): Promise<Uint8Array> => new Uint8Array(await readFile(file(name)));
const hex = (b: Uint8Array): string => Buffer.from(b).toString('hex');
const NONCE = '0011223344556677';

beforeAll(async () => {
  tpm = await startSwtpm();
  // Without a resource manager tpm2-tools leave objects loaded; flush after each tool (tpm-notes §3.13).
  const t = async (tool: string, ...args: string[]) => {
    await tpm2(tool, args, tpm.tcti);
    await tpm2('tpm2_flushcontext', ['-t'], tpm.tcti);
  };
  await t('tpm2_createek', '-G', 'rsa', '-c', file('ek-rsa.ctx'), '-u', file('ek-rsa.pub'));
  await t('tpm2_readpublic', '-c', '0x81010016', '-o', file('ek-ecc.pub'));
  for (const [alg, scheme] of [
    ['rsa', 'rsassa'],
    ['ecc', 'ecdsa'],
  ] as const) {
    await t(
      'tpm2_createak',
      ...['-C', file('ek-rsa.ctx'), '-c', file(`ak-${alg}.ctx`), '-G', alg, '-g', 'sha256', '-s', scheme],
      ...['-u', file(`ak-${alg}.pub`), '-n', file(`ak-${alg}.name`), '-r', file(`ak-${alg}.priv`)],
    );
    await t(
      'tpm2_quote',
      ...['-c', file(`ak-${alg}.ctx`), '-l', 'sha256:0,1,7', '-q', NONCE, '-g', 'sha256'],
      ...['-m', file(`quote-${alg}.msg`), '-s', file(`quote-${alg}.sig`)],
    );
  }
  await t('tpm2_pcrread', 'sha256:0,1,7', '-o', file('pcrs.bin'));
  await writeFile(file('secret'), 'sixteen byte key');
  const akName = hex(await read('ak-rsa.name'));
  await tpm2(
    'tpm2_makecredential',
    ['-u', file('ek-rsa.pub'), '-s', file('secret'), '-n', akName, '-o', file('cred.out')],
    'none',
  );
});

afterAll(() => tpm?.stop());

describe('TPM2B_PUBLIC', () => {
  it('decodes the RSA EK from tpm2_createek and re-encodes it byte for byte', async () => {
    const bytes = await read('ek-rsa.pub');
    const { area } = parseTpm2bPublic(bytes);
    expect(area.type).toBe(TPM_ALG.RSA);
    if (area.type !== TPM_ALG.RSA) return;
    expect(area.nameAlg).toBe(TPM_ALG.SHA256);
    expect(encodeObjectAttributes(area.objectAttributes)).toBe(0x000300b2);
    expect(area.objectAttributes).toMatchObject({ restricted: true, decrypt: true, userWithAuth: false });
    expect(hex(area.authPolicy)).toBe('837197674484b3f81a90cc8d46a5d724fd52d76e06520b64f2a1da1b331469aa');
    expect(area.parameters).toEqual({
      symmetric: { algorithm: TPM_ALG.AES, keyBits: 128, mode: TPM_ALG.CFB },
      scheme: { scheme: TPM_ALG.NULL, hashAlg: TPM_ALG.NULL },
      keyBits: 2048,
      exponent: 0,
    });
    expect(area.unique.byteLength).toBe(256);
    expect(marshalTpm2bPublic(area)).toEqual(bytes);
  });

  it('decodes the high-range ECC P-384 EK made by swtpm_setup and re-encodes it', async () => {
    const bytes = await read('ek-ecc.pub');
    const { area } = parseTpm2bPublic(bytes);
    expect(area.type).toBe(TPM_ALG.ECC);
    if (area.type !== TPM_ALG.ECC) return;
    expect(area.nameAlg).toBe(TPM_ALG.SHA384);
    expect(encodeObjectAttributes(area.objectAttributes)).toBe(0x000300f2);
    expect(area.parameters.curveId).toBe(TPM_ECC.NIST_P384);
    expect(area.parameters.symmetric).toEqual({ algorithm: TPM_ALG.AES, keyBits: 256, mode: TPM_ALG.CFB });
    expect(hex(area.authPolicy)).toBe(
      'b26e7d28d11a50bc53d882bcf5fd3a1a074148bb35d3b4e4cb1c0ad9bde419cacb47ba09699646150f9fc000f3f80e12',
    );
    expect(area.unique.x.byteLength).toBe(48);
    expect(marshalTpm2bPublic(area)).toEqual(bytes);
    expect(publicKeyFromArea(area).asymmetricKeyDetails?.namedCurve).toBe('secp384r1');
  });

  it.each(['rsa', 'ecc'])('computes the %s AK name that tpm2_createak wrote', async (alg) => {
    const parsed = parseTpm2bPublic(await read(`ak-${alg}.pub`));
    expect(objectName(parsed)).toEqual(await read(`ak-${alg}.name`));
    expect(objectName(parsed.area)).toEqual(await read(`ak-${alg}.name`));
    expect(parsed.area.objectAttributes).toMatchObject({
      fixedTPM: true,
      fixedParent: true,
      sensitiveDataOrigin: true,
      restricted: true,
      sign: true,
      decrypt: false,
    });
  });

  it('rejects reserved TPMA_OBJECT bits, truncation and trailing bytes with ERR_TPM_MALFORMED', async () => {
    const bytes = await read('ak-ecc.pub');
    const reserved = Uint8Array.from(bytes);
    reserved[6] = (reserved[6] ?? 0) | 0x80; // bit 31 of objectAttributes (offset 2 + 2 + 2)
    expect(() => parseTpm2bPublic(reserved)).toThrow(/reserved bits/);
    expect(() => parseTpm2bPublic(bytes.subarray(0, bytes.byteLength - 1))).toThrow(TpmError);
    expect(() => parseTpm2bPublic(Uint8Array.of(...bytes, 0))).toThrow(/trailing/);
    try {
      parseTpm2bPublic(bytes.subarray(0, 10));
      expect.unreachable();
    } catch (error) {
      expect(error).toBeInstanceOf(TpmError);
      expect((error as TpmError).code).toBe('ERR_TPM_MALFORMED');
    }
  });
});

describe('TPMS_ATTEST and TPMT_SIGNATURE from tpm2_quote', () => {
  it.each(['rsa', 'ecc'])('decodes the %s quote and its PCR digest matches tpm2_pcrread', async (alg) => {
    const msg = await read(`quote-${alg}.msg`);
    const attest = parseAttest(msg);
    expect(attest.magic).toBe(TPM_GENERATED_VALUE);
    expect(attest.type).toBe(TPM_ST.ATTEST_QUOTE);
    expect(hex(attest.extraData)).toBe(NONCE);
    expect(attest.qualifiedSigner.byteLength).toBe(34);
    expect(attest.clockInfo.safe).toBe(true);
    expect(attest.firmwareVersion).toBeGreaterThan(0n);
    expect(attest.attested.kind).toBe('quote');
    if (attest.attested.kind !== 'quote') return;
    expect(attest.attested.pcrSelect).toEqual([{ hash: TPM_ALG.SHA256, pcrs: [0, 1, 7], sizeOfSelect: 3 }]);
    const expected = createHash('sha256')
      .update(await read('pcrs.bin'))
      .digest();
    expect(hex(attest.attested.pcrDigest)).toBe(expected.toString('hex'));
    expect(marshalAttest(attest)).toEqual(msg);
  });

  it.each(['rsa', 'ecc'])(
    'decodes the %s signature, re-encodes it and it verifies with the AK',
    async (alg) => {
      const raw = await read(`quote-${alg}.sig`);
      const sig = parseSignature(raw);
      expect(marshalSignature(sig)).toEqual(raw);
      expect(sig.hash).toBe(TPM_ALG.SHA256);
      const ak = parseTpm2bPublic(await read(`ak-${alg}.pub`)).area;
      const key = publicKeyFromArea(ak);
      const msg = await read(`quote-${alg}.msg`);
      if (sig.sigAlg === TPM_ALG.ECDSA) {
        expect(alg).toBe('ecc');
        const ok = verify(hashName(sig.hash), msg, { key, dsaEncoding: 'ieee-p1363' }, ecdsaP1363(sig, 32));
        expect(ok).toBe(true);
      } else {
        expect(sig.sigAlg).toBe(TPM_ALG.RSASSA);
        expect(verify(hashName(sig.hash), msg, key, sig.signature)).toBe(true);
        expect(verify(hashName(sig.hash), Uint8Array.of(...msg, 1), key, sig.signature)).toBe(false);
      }
    },
  );
});

describe('TPML_PCR_SELECTION', () => {
  it('encodes sha256:0,1,7 as the bitmap the TPM uses', () => {
    const bytes = marshalPcrSelections([pcrSelection(TPM_ALG.SHA256, [7, 0, 1])]);
    expect(hex(bytes)).toBe('00000001000b03830000');
    expect(parsePcrSelections(bytes)).toEqual([{ hash: TPM_ALG.SHA256, pcrs: [0, 1, 7], sizeOfSelect: 3 }]);
  });

  it('grows the bitmap for PCRs above 23 and rejects indices that do not fit', () => {
    expect(pcrSelection(TPM_ALG.SHA1, [24]).sizeOfSelect).toBe(4);
    expect(() => marshalPcrSelections([{ hash: TPM_ALG.SHA1, pcrs: [30], sizeOfSelect: 3 }])).toThrow(
      RangeError,
    );
  });
});

describe('TPMS_NV_PUBLIC', () => {
  it('computes the EK certificate index name that tpm2_nvreadpublic prints', async () => {
    const out = await tpm2('tpm2_nvreadpublic', ['0x1c00002'], tpm.tcti);
    const name = /name: ([0-9a-f]+)/.exec(out)?.[1];
    const attributes = /value: (0x[0-9A-F]{8})/.exec(out)?.[1];
    const size = /size: (\d+)/.exec(out)?.[1];
    expect(name && attributes && size).toBeTruthy();
    const nv = {
      nvIndex: 0x01c00002,
      nameAlg: TPM_ALG.SHA256,
      attributes: Number(attributes),
      authPolicy: new Uint8Array(),
      dataSize: Number(size),
    };
    expect(hex(nvName(nv))).toBe(name);
    expect(marshalNvPublic(nv).byteLength).toBe(14);
  });
});

describe('tpm2-tools credential file', () => {
  it('splits tpm2_makecredential output into TPM2B_ID_OBJECT and TPM2B_ENCRYPTED_SECRET', async () => {
    const bytes = await read('cred.out');
    const cred = parseTpm2ToolsCredential(bytes);
    expect(cred.secret.byteLength).toBe(256); // RSA-2048 OAEP ciphertext
    const id = parseIdObject(cred.credentialBlob);
    expect(id.integrityHmac.byteLength).toBe(32);
    expect(id.encIdentity.byteLength).toBe(2 + 16); // TPM2B of the 16-byte secret, CFB keeps the length
    expect(marshalTpm2ToolsCredential(cred)).toEqual(bytes);
    expect(() => parseTpm2ToolsCredential(bytes.subarray(4))).toThrow(/not a tpm2-tools credential/);
  });
});

describe('TpmReader', () => {
  it('reads big-endian integers and bounds a TPM2B by its maximum', () => {
    const r = new TpmReader(Uint8Array.of(0x01, 0x02, 0, 0, 0, 3, 0, 2, 0xaa, 0xbb, 0, 0x41));
    expect(r.u16()).toBe(0x0102);
    expect(r.u32()).toBe(3);
    expect(r.tpm2b()).toEqual(Uint8Array.of(0xaa, 0xbb));
    expect(() => r.tpm2b('TPM2B_DATA', 64)).toThrow(/exceeds the maximum 64/);
  });
});
