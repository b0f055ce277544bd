/**
 * The strict DER reader that src/spiffe (CSRs) and src/tpm (EK certificates) share. Pure: no I/O,
 * nothing of ours imported.
 *
 * @module
 */
export { DerError, DerReader, type DerValue, eachOf, inside, readOne, TAG } from './reader.js';
export { checkDerTree } from './tree.js';
export {
  bitStringBytes,
  booleanValue,
  checkBitString,
  checkBoolean,
  checkInteger,
  oidText,
  readOid,
  smallUnsigned,
} from './values.js';
