/**
 * ironroot's TPM 2.0 library: the wire codec, the transport, the command set and the agent-side
 * operations (EK, AK, activation, quote).
 *
 * @module
 */
export * from './agent/index.js';
export * from './codec/index.js';
export * from './errors.js';
export * from './eventlog/index.js';
export * from './profile/index.js';
export * from './rc.js';
export * from './session.js';
export * from './tpm.js';
export * from './transport/index.js';
export * from './verify/index.js';
