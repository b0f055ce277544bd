export type {
  HashName,
  JoseAlgorithm,
  KeyManager,
  KeySigner,
  KeyType,
  ManagedKey,
  SignatureScheme,
} from './key-manager.js';
