export { EV, eventTypeName, HASH_ALGORITHMS, type HashAlgorithm } from './constants.js';
export * from './decode.js';
export { EventLogError, type EventLogErrorCode, type EventLogErrorDetails } from './errors.js';
export * from './facts.js';
export * from './parse.js';
export * from './replay.js';
export * from './signature-list.js';
export * from './summary.js';
