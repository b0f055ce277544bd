import { readdir, rename, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { inspect } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  type HsmEvent,
  type KeyManager,
  openKeyManager,
  Pkcs11KeyManager,
  parsePkcs11Uri,
  type SignatureScheme,
} from '../../src/hsm/index.js';
import { verifyWithNode } from '../helpers/oracles.js';
import { createSoftHsm, SOFTHSM_MODULE, type SoftHsm } from '../helpers/softhsm.js';

const require = createRequire(import.meta.url);
const pkcs11js = require('pkcs11js') as typeof import('pkcs11js');

const ES256: SignatureScheme = { kind: 'ecdsa', hash: 'sha256' };

let softhsm: SoftHsm;

beforeAll(async () => {
  softhsm = await createSoftHsm('faults');
});

afterAll(async () => {
  await softhsm?.cleanup();
});

/** Expects `promise` to reject with an HsmError of `code` whose message mentions none of the PINs. */
async function expectHsmError(promise: Promise<unknown>, code: string): Promise<Error> {
  const error = await promise.then(
    () => {
      throw new Error(`expected ${code}, but the call succeeded`);
    },
    (e: unknown) => e,
  );
  expect(error).toMatchObject({ name: 'HsmError', code });
  if (!(error instanceof Error)) throw new Error('not an Error');
  for (const pin of [softhsm.pin, '11112222']) {
    expect(error.message).not.toContain(pin);
    expect(inspect(error)).not.toContain(pin);
  }
  return error;
}

/**
 * A second, independent pkcs11js handle on the same SoftHSM library in this process: what it does to the
 * library (closing all sessions, finalising) is what a restarted or misbehaving HSM does to us.
 */
function intruder(): import('pkcs11js').PKCS11 {
  const other = new pkcs11js.PKCS11();
  other.load(SOFTHSM_MODULE);
  try {
    other.C_Initialize({ flags: pkcs11js.CKF_OS_LOCKING_OK });
  } catch (error) {
    if ((error as { code?: number }).code !== pkcs11js.CKR_CRYPTOKI_ALREADY_INITIALIZED) throw error;
  }
  return other;
}

describe('start-up faults are named and clear once their cause is gone', () => {
  it('a missing module is ERR_HSM_MODULE_NOT_FOUND naming the path', async () => {
    const uri = softhsm.uri().replace(SOFTHSM_MODULE, '/nonexistent/libpkcs11.so');
    const error = await expectHsmError(openKeyManager(uri), 'ERR_HSM_MODULE_NOT_FOUND');
    expect(error.message).toContain('/nonexistent/libpkcs11.so');
  });

  it('a file that is not a PKCS#11 module is ERR_HSM_MODULE_NOT_FOUND', async () => {
    const uri = softhsm.uri().replace(SOFTHSM_MODULE, softhsm.pinFile);
    await expectHsmError(openKeyManager(uri), 'ERR_HSM_MODULE_NOT_FOUND');
  });

  it('an unknown token is ERR_HSM_TOKEN_NOT_FOUND listing the tokens present', async () => {
    const uri = softhsm.uri().replace('token=faults', 'token=no-such-token');
    const error = await expectHsmError(openKeyManager(uri), 'ERR_HSM_TOKEN_NOT_FOUND');
    expect(error.message).toContain('no-such-token');
    expect(error.message).toContain('token "faults"');
  });

  it('a wrong PIN is ERR_HSM_PIN_INCORRECT (CKR_PIN_INCORRECT) and opening works once the file is fixed', async () => {
    const pinFile = join(softhsm.dir, 'wrong.pin');
    await writeFile(pinFile, '11112222\n', { mode: 0o600 });
    const uri = softhsm.uri().replace(softhsm.pinFile, pinFile);
    const error = await expectHsmError(openKeyManager(uri), 'ERR_HSM_PIN_INCORRECT');
    expect(error).toMatchObject({ ckr: 'CKR_PIN_INCORRECT' });
    expect(error.message).toContain(pinFile);
    await writeFile(pinFile, `${softhsm.pin}\n`);
    const keys = await openKeyManager(uri);
    await keys.close();
  });

  it('a pin file that cannot be read is ERR_HSM_PIN_SOURCE, and opening works once it exists', async () => {
    const pinFile = join(softhsm.dir, 'later.pin');
    const uri = softhsm.uri().replace(softhsm.pinFile, pinFile);
    const error = await expectHsmError(openKeyManager(uri), 'ERR_HSM_PIN_SOURCE');
    expect(error.message).toContain(pinFile);
    expect(error.message).toContain('ENOENT');
    await writeFile(pinFile, softhsm.pin, { mode: 0o600 });
    const keys = await openKeyManager(uri);
    await keys.close();
  });

  it('a pin file open to group or others is refused with ERR_HSM_PIN_SOURCE', async () => {
    for (const mode of [0o640, 0o604, 0o620]) {
      const pinFile = join(softhsm.dir, `loose-${mode.toString(8)}.pin`);
      await writeFile(pinFile, softhsm.pin, { mode });
      const { chmod } = await import('node:fs/promises');
      await chmod(pinFile, mode);
      const error = await expectHsmError(
        openKeyManager(softhsm.uri().replace(softhsm.pinFile, pinFile)),
        'ERR_HSM_PIN_SOURCE',
      );
      expect(error.message).toContain(`chmod 600 ${pinFile}`);
    }
  });

  it('pin-source=env:NAME reads the variable, and an unset one is ERR_HSM_PIN_SOURCE', async () => {
    const uri = softhsm.uri().replace(`file:${softhsm.pinFile}`, 'env:IRONROOT_TEST_PIN');
    delete process.env.IRONROOT_TEST_PIN;
    const error = await expectHsmError(openKeyManager(uri), 'ERR_HSM_PIN_SOURCE');
    expect(error.message).toContain('IRONROOT_TEST_PIN');
    process.env.IRONROOT_TEST_PIN = softhsm.pin;
    try {
      const keys = await openKeyManager(uri);
      await keys.close();
    } finally {
      delete process.env.IRONROOT_TEST_PIN;
    }
  });

  it('a URI with pin-value is refused with ERR_HSM_URI without echoing the PIN', async () => {
    await expectHsmError(openKeyManager(`${softhsm.uri()}?pin-value=${softhsm.pin}`), 'ERR_HSM_URI');
  });
});

describe('recovery while running', () => {
  let keys: Pkcs11KeyManager;
  const events: HsmEvent[] = [];

  beforeAll(async () => {
    keys = await Pkcs11KeyManager.open(parsePkcs11Uri(softhsm.uri()), {
      onEvent: (event) => events.push(event),
      retryIntervalMs: 0,
    });
    await keys.generateKey('ca', 'ec-p256');
  });

  afterAll(async () => {
    await keys?.close();
  });

  async function signsAndVerifies(manager: KeyManager = keys): Promise<void> {
    const key = await manager.getKey('ca');
    if (key === undefined) throw new Error('key "ca" is gone');
    const data = Buffer.from('after recovery');
    expect(verifyWithNode(key.publicKey, ES256, data, await manager.sign('ca', ES256, data))).toBe(true);
  }

  it('sessions closed behind our back (C_CloseAllSessions) are replaced and the sign succeeds', async () => {
    await signsAndVerifies();
    events.length = 0;
    const other = intruder();
    const [slot] = other.C_GetSlotList(true);
    if (slot === undefined) throw new Error('no slot');
    other.C_CloseAllSessions(slot);
    await signsAndVerifies();
    expect(events).toEqual([
      { type: 'unavailable', ckr: 'CKR_SESSION_HANDLE_INVALID', operation: 'sign' },
      { type: 'recovered', reason: 'CKR_SESSION_HANDLE_INVALID' },
    ]);
    expect(keys.state).toBe('ready');
  });

  it('a library finalised behind our back (C_Finalize) is initialised again and the sign succeeds', async () => {
    events.length = 0;
    intruder().C_Finalize();
    await signsAndVerifies();
    expect(events).toEqual([
      { type: 'unavailable', ckr: 'CKR_CRYPTOKI_NOT_INITIALIZED', operation: 'sign' },
      { type: 'recovered', reason: 'CKR_CRYPTOKI_NOT_INITIALIZED' },
    ]);
  });

  it('a key deleted by another process is ERR_HSM_KEY_NOT_FOUND, and signing resumes once the id exists again', async () => {
    await signsAndVerifies();
    const before = await keys.getKey('ca');
    await softhsm.tool('--delete-object', '--type', 'privkey', '--label', 'ca');
    await softhsm.tool('--delete-object', '--type', 'pubkey', '--label', 'ca');
    events.length = 0;
    const error = await expectHsmError(keys.sign('ca', ES256, Buffer.from('x')), 'ERR_HSM_KEY_NOT_FOUND');
    // SoftHSM notices the object file is gone; the stale handle is dropped and the id is looked up again.
    expect(events).toEqual([
      { type: 'unavailable', ckr: 'CKR_OBJECT_HANDLE_INVALID', operation: 'sign' },
      { type: 'recovered', reason: 'CKR_OBJECT_HANDLE_INVALID' },
    ]);
    expect(error.message).toContain('"ca"');
    events.length = 0;
    const replacement = await keys.generateKey('ca', 'ec-p256');
    expect(replacement.publicKey.equals(before?.publicKey ?? replacement.publicKey)).toBe(false);
    await signsAndVerifies();
    expect(events).toContainEqual({ type: 'key-changed', id: 'ca' });
  });

  it('while the token is gone signing fails fast with ERR_HSM_UNAVAILABLE, and resumes when it is back', async () => {
    const patient = await Pkcs11KeyManager.open(parsePkcs11Uri(softhsm.uri()), {
      retryIntervalMs: 3_600_000,
    });
    const patientEvents: HsmEvent[] = [];
    const watched = await Pkcs11KeyManager.open(parsePkcs11Uri(softhsm.uri()), {
      retryIntervalMs: 3_600_000,
      onEvent: (event) => patientEvents.push(event),
    });
    await patient.close();
    const [tokenDir] = await readdir(softhsm.tokenDir);
    if (tokenDir === undefined) throw new Error('no token directory');
    const away = join(softhsm.dir, 'unplugged');
    events.length = 0;
    intruder().C_Finalize();
    await rename(join(softhsm.tokenDir, tokenDir), away);
    try {
      const error = await expectHsmError(keys.sign('ca', ES256, Buffer.from('x')), 'ERR_HSM_UNAVAILABLE');
      expect(error.message).toContain('no initialised token matches token=faults');
      expect(keys.state).toBe('down');
      expect(events.map((e) => e.type)).toEqual(['unavailable', 'recovery-failed']);

      // With a long retry interval the second call does not even try the token again: it fails at once.
      await expectHsmError(watched.sign('ca', ES256, Buffer.from('x')), 'ERR_HSM_UNAVAILABLE');
      const attempts = patientEvents.filter((e) => e.type === 'recovery-failed').length;
      await expectHsmError(watched.sign('ca', ES256, Buffer.from('x')), 'ERR_HSM_UNAVAILABLE');
      expect(patientEvents.filter((e) => e.type === 'recovery-failed').length).toBe(attempts);
    } finally {
      await rename(away, join(softhsm.tokenDir, tokenDir));
    }
    await signsAndVerifies();
    expect(keys.state).toBe('ready');
    expect(events.at(-1)).toMatchObject({ type: 'recovered' });
    await watched.close();
  });

  it('a PIN changed to a wrong one is not retried until the pin file changes, then signing resumes', async () => {
    await writeFile(softhsm.pinFile, '11112222\n');
    events.length = 0;
    intruder().C_Finalize();
    try {
      const first = await expectHsmError(keys.sign('ca', ES256, Buffer.from('x')), 'ERR_HSM_UNAVAILABLE');
      expect(first.cause).toMatchObject({ code: 'ERR_HSM_PIN_INCORRECT', ckr: 'CKR_PIN_INCORRECT' });
      const second = await expectHsmError(keys.sign('ca', ES256, Buffer.from('x')), 'ERR_HSM_UNAVAILABLE');
      expect(second.cause).toMatchObject({ code: 'ERR_HSM_PIN_INCORRECT' });
      expect((second.cause as Error).message).toContain('rejected before');
    } finally {
      await writeFile(softhsm.pinFile, `${softhsm.pin}\n`);
    }
    await signsAndVerifies();
  });
});
