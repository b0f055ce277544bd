/**
 * @module
 * Key custody: CA and JWT signing keys behind one KeyManager interface, held in a PKCS#11 token in
 * production and on disk or in memory for development and tests.
 */
export { isKeyType, KEY_TYPES, schemeOf } from './algorithms.js';
export { ckrName } from './ckr.js';
export { openDiskKeyManager } from './disk.js';
export { HsmError, type HsmErrorCode, isHsmError } from './errors.js';
export type {
  HashName,
  JoseAlgorithm,
  KeyManager,
  KeySigner,
  KeyType,
  ManagedKey,
  SignatureScheme,
} from './key-manager.js';
export { openMemoryKeyManager } from './memory.js';
export { openKeyManager } from './open.js';
export { Pin, readPin } from './pin.js';
export {
  type HsmEvent,
  type InspectedKey,
  Pkcs11KeyManager,
  type Pkcs11Options,
  type Pkcs11Step,
} from './pkcs11.js';
export {
  DEFAULT_MAX_SESSIONS,
  formatPkcs11Uri,
  type PinSource,
  type Pkcs11Uri,
  parsePkcs11Uri,
} from './pkcs11-uri.js';
