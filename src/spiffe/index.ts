export type { Signer, SigningAlgorithm } from './signer.js';
