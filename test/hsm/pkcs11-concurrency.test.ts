import type { KeyObject } from 'node:crypto';
import { createRequire } from 'node:module';
import { afterAll, beforeAll, expect, it } from 'vitest';
import {
  type HsmEvent,
  Pkcs11KeyManager,
  parsePkcs11Uri,
  type SignatureScheme,
} from '../../src/hsm/index.js';
import { verifyWithNode } from '../helpers/oracles.js';
import { createSoftHsm, SOFTHSM_MODULE, type SoftHsm } from '../helpers/softhsm.js';

const pkcs11js = createRequire(import.meta.url)('pkcs11js') as typeof import('pkcs11js');

let softhsm: SoftHsm;
let keys: Pkcs11KeyManager;
const events: HsmEvent[] = [];

beforeAll(async () => {
  softhsm = await createSoftHsm('concurrency');
  keys = await Pkcs11KeyManager.open(parsePkcs11Uri(softhsm.uri(';max-sessions=4')), {
    onEvent: (event) => events.push(event),
  });
  await keys.generateKey('p256', 'ec-p256');
  await keys.generateKey('p384', 'ec-p384');
  await keys.generateKey('rsa', 'rsa-2048');
});

afterAll(async () => {
  await keys?.close();
  await softhsm?.cleanup();
});

it('4000 overlapping signs on three keys over a pool of four sessions all verify, each over its own data', async () => {
  const plan: Array<[string, SignatureScheme]> = [
    ['p256', { kind: 'ecdsa', hash: 'sha256' }],
    ['p384', { kind: 'ecdsa', hash: 'sha384' }],
    ['rsa', { kind: 'rsa-pss', hash: 'sha256' }],
    ['rsa', { kind: 'rsa-pkcs1', hash: 'sha256' }],
  ];
  const publicKeys = new Map<string, KeyObject>();
  for (const key of await keys.listKeys()) publicKeys.set(key.id, key.publicKey);
  const jobs = Array.from({ length: 4000 }, (_, i) => {
    const entry = plan[i % plan.length];
    if (entry === undefined) throw new Error('empty plan');
    const [id, scheme] = entry;
    const data = Buffer.from(`message ${i}`);
    return keys.sign(id, scheme, data).then((signature) => ({ id, scheme, data, signature }));
  });
  const results = await Promise.all(jobs);
  let verified = 0;
  for (const { id, scheme, data, signature } of results) {
    const publicKey = publicKeys.get(id);
    if (publicKey !== undefined && verifyWithNode(publicKey, scheme, data, signature)) verified++;
  }
  expect(verified).toBe(4000);
  // No session was ever shared by two operations: SoftHSM would have answered CKR_OPERATION_ACTIVE.
  expect(events).toEqual([]);
});

it('signs that overlap a recovery all complete and verify', async () => {
  const key = await keys.getKey('p256');
  if (key === undefined) throw new Error('p256 missing');
  const scheme: SignatureScheme = { kind: 'ecdsa', hash: 'sha256' };
  const other = new pkcs11js.PKCS11();
  other.load(SOFTHSM_MODULE);
  try {
    other.C_Initialize({ flags: pkcs11js.CKF_OS_LOCKING_OK });
  } catch (error) {
    if ((error as { code?: number }).code !== pkcs11js.CKR_CRYPTOKI_ALREADY_INITIALIZED) throw error;
  }
  const [slot] = other.C_GetSlotList(true);
  if (slot === undefined) throw new Error('no slot');
  events.length = 0;
  let settled = 0;
  const jobs = Array.from({ length: 1000 }, (_, i) => {
    const data = Buffer.from(`during recovery ${i}`);
    return keys.sign('p256', scheme, data).then((signature) => {
      settled++;
      return verifyWithNode(key.publicKey, scheme, data, signature);
    });
  });
  // Let a fair part finish so that the rest are in flight or queued, then take every session away.
  while (settled < 200) await new Promise((resolve) => setImmediate(resolve));
  other.C_CloseAllSessions(slot);
  const outcomes = await Promise.all(jobs);
  expect(outcomes.filter(Boolean).length).toBe(1000);
  expect(events).toContainEqual({ type: 'recovered', reason: 'CKR_SESSION_HANDLE_INVALID' });
  expect(settled).toBe(1000);
  expect(keys.state).toBe('ready');
});
