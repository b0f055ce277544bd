/**
 * ironroot's TPM 2.0 library.
 *
 * @module
 */
export * from './codec/index.js';
export * from './errors.js';
export * from './verify/index.js';
