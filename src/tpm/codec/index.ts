/**
 * TPM 2.0 wire-format codec: Part 2 structures, constants and names. Pure: no I/O.
 *
 * @module
 */
export * from './attest.js';
export * from './buffer.js';
export * from './capability.js';
export * from './constants.js';
export * from './credential.js';
export * from './hash.js';
export * from './nv.js';
export * from './pcr.js';
export * from './public.js';
export * from './public-key.js';
export * from './signature.js';
