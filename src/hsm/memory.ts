/**
 * @module
 * Keys in a Map, for tests and throwaway development servers. Nothing survives the process.
 */
import type { KeyObject } from 'node:crypto';
import { HsmError } from './errors.js';
import { notFound, SoftwareKeyManager, type SoftwareKeyStore } from './software.js';

class MemoryStore implements SoftwareKeyStore {
  readonly #keys = new Map<string, KeyObject>();

  async load(id: string): Promise<KeyObject | undefined> {
    return this.#keys.get(id);
  }

  async ids(): Promise<string[]> {
    return [...this.#keys.keys()];
  }

  async create(id: string, key: KeyObject): Promise<void> {
    if (this.#keys.has(id))
      throw new HsmError('ERR_HSM_KEY_EXISTS', `key "${id}" already exists; pick another id`);
    this.#keys.set(id, key);
  }

  async remove(id: string): Promise<void> {
    if (!this.#keys.delete(id)) throw notFound(id, 'memory');
  }
}

export function openMemoryKeyManager(): SoftwareKeyManager {
  return new SoftwareKeyManager('memory', new MemoryStore());
}
