import { generateKeyPairSync, type KeyObject } from 'node:crypto';
import type { JoseAlgorithm, KeyManager, KeyType, ManagedKey } from '../../src/hsm/key-manager.js';
import { createKeySigner } from '../../src/spiffe/index.js';

/**
 * An in-process KeyManager for CA tests that need no HSM: EC keys from node:crypto, signing
 * through the spiffe library's key signer. It records destroyed key ids so tests can assert them.
 */
export class TestKeyManager implements KeyManager {
  readonly kind = 'memory' as const;
  readonly destroyed: string[] = [];
  readonly #keys = new Map<string, { managed: ManagedKey; privateKey: KeyObject }>();

  async generateKey(id: string, type: KeyType): Promise<ManagedKey> {
    if (this.#keys.has(id)) throw new Error(`key ${id} exists`);
    if (type !== 'ec-p256' && type !== 'ec-p384')
      throw new Error(`test key manager makes EC keys only, not ${type}`);
    const { privateKey, publicKey } = generateKeyPairSync('ec', {
      namedCurve: type === 'ec-p256' ? 'P-256' : 'P-384',
    });
    const managed = { id, type, publicKey };
    this.#keys.set(id, { managed, privateKey });
    return managed;
  }

  async getKey(id: string): Promise<ManagedKey | undefined> {
    return this.#keys.get(id)?.managed;
  }

  async listKeys(): Promise<ManagedKey[]> {
    return [...this.#keys.values()].map((k) => k.managed);
  }

  async sign(): Promise<Uint8Array> {
    throw new Error('the CA signs through signer(), not sign()');
  }

  async signer(id: string, algorithm: JoseAlgorithm) {
    const key = this.#keys.get(id);
    if (!key) throw new Error(`no key ${id}`);
    return createKeySigner(key.privateKey, algorithm);
  }

  async destroyKey(id: string): Promise<void> {
    this.#keys.delete(id);
    this.destroyed.push(id);
  }

  async close(): Promise<void> {}
}
