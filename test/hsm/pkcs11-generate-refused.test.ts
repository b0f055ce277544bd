import { createRequire } from 'node:module';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Pkcs11KeyManager, parsePkcs11Uri } from '../../src/hsm/index.js';
import { createSoftHsm, SOFTHSM_MODULE, type SoftHsm } from '../helpers/softhsm.js';

const require = createRequire(import.meta.url);
const pkcs11js = require('pkcs11js') as typeof import('pkcs11js');
type Pkcs11 = import('pkcs11js').PKCS11;

let softhsm: SoftHsm;
let keys: Pkcs11KeyManager;
let other: Pkcs11;
let otherSession: Buffer;

beforeAll(async () => {
  softhsm = await createSoftHsm('generate-refused');
  keys = await Pkcs11KeyManager.open(parsePkcs11Uri(softhsm.uri()));
  // Another application on the same token (an independent pkcs11js handle on the same SoftHSM
  // library in this process): its objects are on the token the moment it creates them.
  other = new pkcs11js.PKCS11();
  other.load(SOFTHSM_MODULE);
  try {
    other.C_Initialize({ flags: pkcs11js.CKF_OS_LOCKING_OK });
  } catch (error) {
    if ((error as { code?: number }).code !== pkcs11js.CKR_CRYPTOKI_ALREADY_INITIALIZED) throw error;
  }
  const [slot] = other.C_GetSlotList(true);
  if (slot === undefined) throw new Error('no slot');
  otherSession = other.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION | pkcs11js.CKF_RW_SESSION);
  try {
    other.C_Login(otherSession, pkcs11js.CKU_USER, softhsm.pin);
  } catch (error) {
    // Login belongs to the application: the key manager has already logged this library in.
    if ((error as { code?: number }).code !== pkcs11js.CKR_USER_ALREADY_LOGGED_IN) throw error;
  }
});

afterAll(async () => {
  await keys?.close();
  await softhsm?.cleanup();
});

/** A sound EC key pair with `id` as CKA_ID and CKA_LABEL, made by the other application. */
function otherKeyPair(id: string): Buffer[] {
  const naming = [
    { type: pkcs11js.CKA_TOKEN, value: true },
    { type: pkcs11js.CKA_ID, value: Buffer.from(id) },
    { type: pkcs11js.CKA_LABEL, value: id },
  ];
  const pair = other.C_GenerateKeyPair(
    otherSession,
    { mechanism: pkcs11js.CKM_EC_KEY_PAIR_GEN },
    [
      ...naming,
      { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PUBLIC_KEY },
      // DER OID of prime256v1.
      { type: pkcs11js.CKA_EC_PARAMS, value: Buffer.from('06082a8648ce3d030107', 'hex') },
    ],
    [
      ...naming,
      { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PRIVATE_KEY },
      { type: pkcs11js.CKA_PRIVATE, value: true },
      { type: pkcs11js.CKA_SENSITIVE, value: true },
      { type: pkcs11js.CKA_EXTRACTABLE, value: false },
      { type: pkcs11js.CKA_SIGN, value: true },
    ],
  );
  return [pair.privateKey, pair.publicKey];
}

/** Every token object with `id` as CKA_ID, as handles in hex (sorted). */
function objectsWithId(id: string): string[] {
  other.C_FindObjectsInit(otherSession, [
    { type: pkcs11js.CKA_TOKEN, value: true },
    { type: pkcs11js.CKA_ID, value: Buffer.from(id) },
  ]);
  try {
    return other
      .C_FindObjects(otherSession, 64)
      .map((h) => h.toString('hex'))
      .sort();
  } finally {
    other.C_FindObjectsFinal(otherSession);
  }
}

describe('a generated key refused on read-back', () => {
  it('is destroyed, both halves, and nothing else is', async () => {
    // The other application creates the same id while ironroot's RSA 4096 generation runs on the
    // thread pool: after the up-front "id is free" check, before the read-back, which then finds two
    // private keys with the id and refuses the new one.
    const pending = keys.generateKey('contested', 'rsa-4096');
    const settled = pending.then(
      () => undefined,
      (error: unknown) => error,
    );
    await new Promise((resolve) => setImmediate(resolve));
    const theirs = otherKeyPair('contested')
      .map((h) => h.toString('hex'))
      .sort();

    expect(await settled).toMatchObject({
      name: 'HsmError',
      code: 'ERR_HSM_KEY_ATTRIBUTES',
      message: 'the token holds 2 private keys with id "contested"; destroy the extra ones',
    });
    // Only the other application's pair is left: ironroot took back the two objects it had made.
    expect(objectsWithId('contested')).toEqual(theirs);
  });
});
