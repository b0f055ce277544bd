/**
 * @module
 * Signing with node:crypto keys, shared by the memory and disk managers: the same schemes and output
 * formats as the PKCS#11 manager, so code above cannot tell them apart.
 */
import { constants, createPublicKey, generateKeyPair, type KeyObject, sign } from 'node:crypto';
import { promisify } from 'node:util';
import {
  assertAlgorithmFits,
  assertKeyId,
  assertSchemeFits,
  HASH_LENGTH,
  keyTypeOf,
  namedCurveOf,
  rsaBitsOf,
  schemeOf,
} from './algorithms.js';
import { HsmError } from './errors.js';
import type {
  JoseAlgorithm,
  KeyManager,
  KeySigner,
  KeyType,
  ManagedKey,
  SignatureScheme,
} from './key-manager.js';

const generateKeyPairAsync = promisify(generateKeyPair);
const signAsync = promisify(sign);

async function generateSoftwareKey(type: KeyType): Promise<KeyObject> {
  if (type === 'ec-p256' || type === 'ec-p384') {
    const { privateKey } = await generateKeyPairAsync('ec', { namedCurve: namedCurveOf(type) });
    return privateKey;
  }
  const { privateKey } = await generateKeyPairAsync('rsa', {
    modulusLength: rsaBitsOf(type),
    publicExponent: 65537,
  });
  return privateKey;
}

/** Signs on libuv's pool (the callback form of crypto.sign), so large RSA keys do not stall the loop. */
async function signSoftware(key: KeyObject, scheme: SignatureScheme, data: Uint8Array): Promise<Uint8Array> {
  switch (scheme.kind) {
    case 'ecdsa':
      return signAsync(scheme.hash, data, { key, dsaEncoding: 'ieee-p1363' });
    case 'rsa-pkcs1':
      return signAsync(scheme.hash, data, { key, padding: constants.RSA_PKCS1_PADDING });
    case 'rsa-pss':
      // JWS PS* and most X.509 profiles fix the salt length to the hash length (RFC 7518 section 3.5).
      return signAsync(scheme.hash, data, {
        key,
        padding: constants.RSA_PKCS1_PSS_PADDING,
        saltLength: HASH_LENGTH[scheme.hash],
      });
  }
}

/** Private keys by id, wherever the concrete manager keeps them. */
export interface SoftwareKeyStore {
  load(id: string): Promise<KeyObject | undefined>;
  ids(): Promise<string[]>;
  /** Stores a new key; fails with ERR_HSM_KEY_EXISTS if the id is taken. */
  create(id: string, key: KeyObject): Promise<void>;
  /** Removes a key; fails with ERR_HSM_KEY_NOT_FOUND if there is none. */
  remove(id: string): Promise<void>;
}

function managed(id: string, key: KeyObject): ManagedKey {
  const type = keyTypeOf(key);
  if (type === undefined) {
    throw new HsmError(
      'ERR_HSM_KEY_TYPE',
      `key "${id}" is of a type ironroot does not use; remove or replace it`,
    );
  }
  return { id, type, publicKey: createPublicKey(key) };
}

export class SoftwareKeyManager implements KeyManager {
  readonly kind: 'disk' | 'memory';
  readonly #store: SoftwareKeyStore;
  #closed = false;

  constructor(kind: 'disk' | 'memory', store: SoftwareKeyStore) {
    this.kind = kind;
    this.#store = store;
  }

  async generateKey(id: string, type: KeyType): Promise<ManagedKey> {
    this.#assertOpen();
    assertKeyId(id);
    const key = await generateSoftwareKey(type);
    await this.#store.create(id, key);
    return managed(id, key);
  }

  async getKey(id: string): Promise<ManagedKey | undefined> {
    this.#assertOpen();
    assertKeyId(id);
    const key = await this.#store.load(id);
    return key === undefined ? undefined : managed(id, key);
  }

  async listKeys(): Promise<ManagedKey[]> {
    this.#assertOpen();
    const keys: ManagedKey[] = [];
    for (const id of (await this.#store.ids()).sort()) {
      const key = await this.#store.load(id);
      if (key !== undefined) keys.push(managed(id, key));
    }
    return keys;
  }

  async sign(id: string, scheme: SignatureScheme, data: Uint8Array): Promise<Uint8Array> {
    const key = await this.#require(id);
    const type = keyTypeOf(key);
    if (type === undefined)
      throw new HsmError('ERR_HSM_KEY_TYPE', `key "${id}" is of a type ironroot does not use`);
    assertSchemeFits(id, type, scheme);
    return signSoftware(key, scheme, data);
  }

  async signer(id: string, algorithm: JoseAlgorithm): Promise<KeySigner> {
    const key = await this.getKey(id);
    if (key === undefined) throw notFound(id, this.kind);
    assertAlgorithmFits(id, key.type, algorithm);
    return signerFor(this, key, algorithm);
  }

  async destroyKey(id: string): Promise<void> {
    this.#assertOpen();
    assertKeyId(id);
    await this.#store.remove(id);
  }

  async close(): Promise<void> {
    this.#closed = true;
  }

  async #require(id: string): Promise<KeyObject> {
    this.#assertOpen();
    assertKeyId(id);
    const key = await this.#store.load(id);
    if (key === undefined) throw notFound(id, this.kind);
    return key;
  }

  #assertOpen(): void {
    if (this.#closed)
      throw new HsmError('ERR_HSM_CLOSED', `the ${this.kind} key manager is closed; open a new one`);
  }
}

export function notFound(id: string, where: string): HsmError {
  return new HsmError(
    'ERR_HSM_KEY_NOT_FOUND',
    `no key "${id}" in the ${where} key store; generate it (ironroot-server hsm keys generate ${id}) or fix the id`,
  );
}

/** A KeySigner that signs through `manager`, so it keeps working across a token's recovery. */
export function signerFor(manager: KeyManager, key: ManagedKey, algorithm: JoseAlgorithm): KeySigner {
  const scheme = schemeOf(algorithm);
  return {
    algorithm,
    publicKey: key.publicKey,
    sign: (data: Uint8Array) => manager.sign(key.id, scheme, data),
  };
}
