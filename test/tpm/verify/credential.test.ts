import { createPublicKey } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type CredentialEk, makeCredentialFromParts } from '../../../src/tpm/verify/credential.js';
import {
  ECC_EK_HANDLE,
  ekPolicySession,
  RSA_EK_HANDLE,
  readOut,
  startTestTpm,
  type TestTpm,
  toolsCredentialFile,
  writeIn,
} from './harness.js';

let tpm: TestTpm;

const EK_HANDLE = { rsa: RSA_EK_HANDLE, ecc: ECC_EK_HANDLE } as const;

/**
 * The EK's credential parameters taken from tpm2_readpublic (PEM for the key, the YAML for nameAlg
 * and the symmetric key size), so this test does not depend on our own TPMT_PUBLIC decoding.
 */
async function ekParts(kind: 'rsa' | 'ecc'): Promise<CredentialEk> {
  const yaml = await tpm.tool('tpm2_readpublic', [
    '-c',
    EK_HANDLE[kind],
    '-f',
    'pem',
    '-o',
    `ek-${kind}.pem`,
  ]);
  const nameAlg = /name-alg:\s*\n\s*value: (\w+)/.exec(yaml)?.[1];
  const symBits = Number(/sym-keybits: (\d+)/.exec(yaml)?.[1]);
  if (nameAlg !== 'sha256' && nameAlg !== 'sha384') throw new Error(`unexpected EK nameAlg ${nameAlg}`);
  const jwk = createPublicKey(await readOut(tpm, `ek-${kind}.pem`)).export({ format: 'jwk' });
  if (kind === 'rsa') {
    if (jwk.n === undefined || jwk.e === undefined) throw new Error('EK PEM is not an RSA key');
    return {
      type: 'rsa',
      nameAlg,
      symmetricKeyBits: symBits,
      modulus: Buffer.from(jwk.n, 'base64url'),
      exponent: Buffer.from(jwk.e, 'base64url').readUIntBE(0, Buffer.from(jwk.e, 'base64url').length),
    };
  }
  if (jwk.x === undefined || jwk.y === undefined || jwk.crv !== 'P-384') throw new Error('EK is not P-384');
  return {
    type: 'ecc',
    nameAlg,
    symmetricKeyBits: symBits,
    curve: 'secp384r1',
    x: Buffer.from(jwk.x, 'base64url'),
    y: Buffer.from(jwk.y, 'base64url'),
  };
}

/** Creates an AK under the EK with tpm2_createak; returns the AK's Name as the TPM computed it. */
async function createAk(kind: 'rsa' | 'ecc'): Promise<Buffer> {
  await tpm.tool('tpm2_createak', [
    '-C',
    EK_HANDLE[kind],
    '-c',
    `ak-${kind}.ctx`,
    '-G',
    kind,
    '-g',
    'sha256',
    '-s',
    kind === 'rsa' ? 'rsassa' : 'ecdsa',
    '-u',
    `ak-${kind}.pub`,
    '-r',
    `ak-${kind}.priv`,
    '-n',
    `ak-${kind}.name`,
  ]);
  await tpm.tool('tpm2_flushcontext', ['-t']);
  return readOut(tpm, `ak-${kind}.name`);
}

/** Loads the AK and runs TPM2_ActivateCredential on a tpm2-tools credential file; returns the secret. */
async function activate(kind: 'rsa' | 'ecc', credentialFile: Buffer): Promise<Buffer> {
  await writeIn(tpm, `cred-${kind}.bin`, credentialFile);
  const load = [
    '-C',
    EK_HANDLE[kind],
    '-u',
    `ak-${kind}.pub`,
    '-r',
    `ak-${kind}.priv`,
    '-c',
    `ak-${kind}.ctx`,
  ];
  if (kind === 'rsa') {
    // The low-range EK has no userWithAuth, so even loading a child needs its policy.
    const session = await ekPolicySession(tpm, kind);
    await tpm.tool('tpm2_load', [...load, '-P', `session:${session}`]);
    await tpm.tool('tpm2_flushcontext', [session]);
  } else {
    await tpm.tool('tpm2_load', load);
  }
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

describe.each(['rsa', 'ecc'] as const)('MakeCredential from parts, %s EK', (kind) => {
  let ek: CredentialEk;
  let akName: Buffer;

  beforeAll(async () => {
    ek = await ekParts(kind);
    akName = await createAk(kind);
  });

  it('is recovered by TPM2_ActivateCredential on swtpm', async () => {
    const secret = Buffer.from(`ironroot ${kind} challenge 0123456789`.slice(0, 32));
    const made = makeCredentialFromParts(ek, akName, secret);
    const recovered = await activate(kind, toolsCredentialFile(made.idObject, made.encryptedSecret));
    expect(recovered.equals(secret)).toBe(true);
  });

  it('is refused by the TPM when bound to another object name', async () => {
    const otherName = Buffer.from(akName);
    const last = otherName.length - 1;
    otherName.writeUInt8(otherName.readUInt8(last) ^ 0x01, last);
    const made = makeCredentialFromParts(ek, otherName, Buffer.from('bound to a different name'));
    await expect(activate(kind, toolsCredentialFile(made.idObject, made.encryptedSecret))).rejects.toThrow(
      /0x1DF.*integrity check failed/,
    );
  });

  it('has the same structure as tpm2_makecredential --tcti none', async () => {
    const secret = Buffer.from('structure check');
    await writeIn(tpm, 'secret.bin', secret);
    await tpm.tool('tpm2_readpublic', ['-c', EK_HANDLE[kind], '-f', 'tss', '-o', `ek-${kind}.tss`]);
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
    const theirs = await readOut(tpm, `tools-cred-${kind}.bin`);
    const made = makeCredentialFromParts(ek, akName, secret);
    const ours = toolsCredentialFile(made.idObject, made.encryptedSecret);
    // Randomised (seed or ephemeral key), so only sizes and the fixed-size fields can be compared.
    expect(ours.length).toBe(theirs.length);
    expect(ours.subarray(0, 12)).toEqual(theirs.subarray(0, 12));
  });
});
