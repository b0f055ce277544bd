/**
 * @module
 * One entry point for every key store, chosen by a spec string:
 * `pkcs11:…` (an RFC 7512 URI), `disk:/path/to/dir` or `memory:`.
 */
import { isAbsolute } from 'node:path';
import { openDiskKeyManager } from './disk.js';
import { HsmError } from './errors.js';
import type { KeyManager } from './key-manager.js';
import { openMemoryKeyManager } from './memory.js';
import { Pkcs11KeyManager, type Pkcs11Options } from './pkcs11.js';
import { parsePkcs11Uri } from './pkcs11-uri.js';

export async function openKeyManager(spec: string, options: Pkcs11Options = {}): Promise<KeyManager> {
  if (spec.startsWith('pkcs11:')) return Pkcs11KeyManager.open(parsePkcs11Uri(spec), options);
  if (spec.startsWith('disk:')) {
    const dir = spec.slice('disk:'.length);
    if (!isAbsolute(dir))
      throw new HsmError('ERR_HSM_URI', `key store "disk:${dir}" needs an absolute directory path`);
    return openDiskKeyManager(dir);
  }
  if (spec === 'memory:') return openMemoryKeyManager();
  throw new HsmError(
    'ERR_HSM_URI',
    `unknown key store "${spec.split(/[?;]/)[0]}"; use pkcs11:… (an RFC 7512 URI), disk:/absolute/dir or memory:`,
  );
}
