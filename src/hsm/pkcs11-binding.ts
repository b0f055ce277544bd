/**
 * @module
 * The pkcs11js binding, loaded once. pkcs11js is CommonJS and declares its API as an ambient module, so
 * it is required rather than imported; its types come from the same declaration.
 */
import { createRequire } from 'node:module';

export type Pkcs11Module = typeof import('pkcs11js');
export type PKCS11 = import('pkcs11js').PKCS11;
export type Attribute = import('pkcs11js').Attribute;
export type Mechanism = import('pkcs11js').Mechanism;
export type RsaPSS = import('pkcs11js').RsaPSS;
export type Template = import('pkcs11js').Template;
export type TokenInfo = import('pkcs11js').TokenInfo;

const require = createRequire(import.meta.url);

export const pkcs11js = require('pkcs11js') as Pkcs11Module;
