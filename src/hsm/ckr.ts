/**
 * @module
 * PKCS#11 return values by name. Operators search for `CKR_PIN_INCORRECT`, not for 160, so every
 * message and event names the code; the table comes from pkcs11js's own constants, which follow the
 * PKCS#11 headers.
 */
import { pkcs11js } from './pkcs11-binding.js';

const constants: Readonly<Record<string, unknown>> = pkcs11js;

const NAMES: ReadonlyMap<number, string> = new Map(
  Object.entries(constants)
    .filter((entry): entry is [string, number] => entry[0].startsWith('CKR_') && typeof entry[1] === 'number')
    .map(([name, value]) => [value, name]),
);

const CKR_VENDOR_DEFINED = 0x80000000;

/** The CKR_ name of a PKCS#11 return value; vendor and unknown values are shown in hex. */
export function ckrName(code: number): string {
  const name = NAMES.get(code);
  if (name !== undefined) return name;
  const hex = `0x${code.toString(16).padStart(8, '0')}`;
  return code >= CKR_VENDOR_DEFINED ? `CKR_VENDOR_DEFINED(${hex})` : `CKR_UNKNOWN(${hex})`;
}

/**
 * The CKR_ name carried by an error thrown by pkcs11js, or undefined for errors that did not come from
 * the token (a failed dlopen, a bad argument).
 */
export function ckrOf(error: unknown): string | undefined {
  if (typeof error !== 'object' || error === null) return undefined;
  const code = (error as { code?: unknown }).code;
  const name = (error as { name?: unknown }).name;
  if (name === 'Pkcs11Error' && typeof code === 'number') return ckrName(code);
  return undefined;
}
