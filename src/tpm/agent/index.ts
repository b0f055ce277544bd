/**
 * Agent-side TPM operations: EKs and their certificates, AKs, credential activation, quotes.
 *
 * @module
 */
export * from './activate.js';
export * from './ak.js';
export * from './ek.js';
export * from './ek-templates.js';
export * from './eventlog.js';
export * from './pcrs.js';
