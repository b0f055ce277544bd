import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TPM_ALG } from '../../../src/tpm/codec/constants.js';
import {
  type CredentialChallenge,
  marshalTpm2ToolsCredential,
  parseIdObject,
  parseTpm2ToolsCredential,
} from '../../../src/tpm/codec/credential.js';
import type { ParsedPublic, TpmtPublic } from '../../../src/tpm/codec/public.js';
import { TpmError } from '../../../src/tpm/errors.js';
import { makeCredential } from '../../../src/tpm/verify/credential.js';
import {
  createAk,
  EK_HANDLE,
  type EkKind,
  ekPolicySession,
  loadAk,
  readEkPublic,
  readOut,
  startTestTpm,
  type TestTpm,
  writeIn,
} from './harness.js';

let tpm: TestTpm;

/** Runs TPM2_ActivateCredential on swtpm with the AK `ak-<kind>` and the EK's policy; returns the secret. */
async function activate(kind: EkKind, challenge: CredentialChallenge): Promise<Buffer> {
  await writeIn(tpm, `cred-${kind}.bin`, marshalTpm2ToolsCredential(challenge));
  await loadAk(tpm, kind, `ak-${kind}`);
  const session = await ekPolicySession(tpm, kind);
  try {
    await tpm.tool('tpm2_activatecredential', [
      '-c',
      `ak-${kind}.ctx`,
      '-C',
      EK_HANDLE[kind],
      '-i',
      `cred-${kind}.bin`,
      '-o',
      `secret-${kind}.out`,
      '-P',
      `session:${session}`,
    ]);
    return await readOut(tpm, `secret-${kind}.out`);
  } finally {
    await tpm.tool('tpm2_flushcontext', [session]).catch(() => undefined);
    await tpm.tool('tpm2_flushcontext', ['-t']);
  }
}

beforeAll(async () => {
  tpm = await startTestTpm();
});

afterAll(async () => {
  await tpm?.stop();
});

describe.each([
  ['rsa', 'RSA-2048 low-range', 'rsa', 'rsassa'],
  ['ecc', 'ECC P-384 high-range', 'ecc', 'ecdsa'],
] as const)('MakeCredential to the %s EK (%s)', (kind, _label, akKey, akScheme) => {
  let ek: ParsedPublic;
  let akName: Buffer;

  beforeAll(async () => {
    ek = await readEkPublic(tpm, kind);
    akName = await createAk(tpm, kind, `ak-${kind}`, akKey, akScheme);
  });

  it('is recovered by TPM2_ActivateCredential on swtpm', async () => {
    const secret = Buffer.from(`ironroot ${kind} challenge, 32 B`);
    const recovered = await activate(kind, makeCredential(ek.area, akName, secret));
    expect(recovered.toString('hex')).toBe(secret.toString('hex'));
  });

  it('recovers a credential as long as the EK nameAlg digest', async () => {
    const secret = Buffer.alloc(kind === 'rsa' ? 32 : 48, 0xa5);
    const recovered = await activate(kind, makeCredential(ek.area, akName, secret));
    expect(recovered.toString('hex')).toBe(secret.toString('hex'));
  });

  it('is refused by the TPM when bound to another object name', async () => {
    const otherName = Buffer.from(akName);
    const last = otherName.length - 1;
    otherName.writeUInt8(otherName.readUInt8(last) ^ 0x01, last);
    const challenge = makeCredential(ek.area, otherName, Buffer.from('bound to a different name'));
    await expect(activate(kind, challenge)).rejects.toThrow(/0x1DF.*integrity check failed/);
  });

  it('has the structure tpm2_makecredential --tcti none produces', async () => {
    const secret = Buffer.from('structure check');
    await writeIn(tpm, 'secret.bin', secret);
    await tpm.tool('tpm2_makecredential', [
      '--tcti',
      'none',
      '-u',
      `ek-${kind}.tss`,
      '-s',
      'secret.bin',
      '-n',
      akName.toString('hex'),
      '-o',
      `tools-cred-${kind}.bin`,
    ]);
    const theirs = parseTpm2ToolsCredential(await readOut(tpm, `tools-cred-${kind}.bin`));
    const ours = makeCredential(ek.area, akName, secret);
    // Randomised (seed or ephemeral key), so sizes are compared, not bytes.
    if (kind === 'rsa') expect(ours.secret.length).toBe(theirs.secret.length);
    else {
      // A TPMS_ECC_POINT: ours pads each coordinate to the curve's 48 bytes; tpm2-tools writes
      // OpenSSL's minimal big-endian form, a byte shorter when the top byte is zero (about one run in
      // 128). The TPM reads either.
      const coordinates = (point: Uint8Array): number[] => {
        const bytes = Buffer.from(point);
        const x = bytes.readUInt16BE(0);
        const y = bytes.readUInt16BE(2 + x);
        expect(4 + x + y).toBe(bytes.length);
        return [x, y];
      };
      expect(coordinates(ours.secret)).toEqual([48, 48]);
      for (const length of coordinates(theirs.secret)) expect(48 - length).toBeOneOf([0, 1, 2]);
    }
    const [ourId, theirId] = [parseIdObject(ours.credentialBlob), parseIdObject(theirs.credentialBlob)];
    expect(ourId.integrityHmac.length).toBe(theirId.integrityHmac.length);
    expect(ourId.encIdentity.length).toBe(theirId.encIdentity.length);
  });

  it('refuses an empty credential and one longer than the nameAlg digest', () => {
    const digest = kind === 'rsa' ? 32 : 48;
    expect(() => makeCredential(ek.area, akName, Buffer.alloc(0))).toThrow(RangeError);
    expect(() => makeCredential(ek.area, akName, Buffer.alloc(digest + 1))).toThrow(RangeError);
  });

  it('refuses an EK whose symmetric definition is not AES-CFB', () => {
    const symmetric = { algorithm: TPM_ALG.AES, keyBits: 128, mode: TPM_ALG.CBC };
    const area: TpmtPublic =
      ek.area.type === TPM_ALG.RSA
        ? { ...ek.area, parameters: { ...ek.area.parameters, symmetric } }
        : { ...ek.area, parameters: { ...ek.area.parameters, symmetric } };
    let thrown: unknown;
    try {
      makeCredential(area, akName, Buffer.from('x'));
    } catch (err) {
      thrown = err;
    }
    expect(thrown).toBeInstanceOf(TpmError);
    expect(thrown).toMatchObject({ code: 'ERR_TPM_UNSUPPORTED' });
  });
});
