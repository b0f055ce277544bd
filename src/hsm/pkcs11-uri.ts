/**
 * @module
 * RFC 7512 PKCS#11 URIs naming the token (and optionally a key) ironroot uses:
 *
 *   pkcs11:token=ironroot;object=ca-1?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/ironroot/pin
 *
 * Path attributes: `token`, `serial`, `slot-id` (at least one; all given must match), `object` and `id`
 * (a key). Query attributes: `module-path` (required), `pin-source` (`file:PATH`, a bare absolute path,
 * or `env:NAME`) and the smallstep-style extension `max-sessions`. Like smallstep, query attributes are
 * also accepted in the path part, so `;module-path=…;pin-source=…` works. `pin-value` is refused: a PIN
 * in a URI ends up on command lines, in shell history and in logs.
 */
import { inspect } from 'node:util';
import { HsmError } from './errors.js';

export type PinSource =
  | { readonly kind: 'file'; readonly path: string }
  | { readonly kind: 'env'; readonly name: string };

export interface Pkcs11Uri {
  readonly modulePath: string;
  readonly token: string | undefined;
  readonly serial: string | undefined;
  readonly slotId: number | undefined;
  /** CKA_LABEL of a key the URI names. */
  readonly object: string | undefined;
  /** CKA_ID of a key the URI names. */
  readonly id: Buffer | undefined;
  /** Where the user PIN comes from; undefined for a token that needs no login. */
  readonly pinSource: PinSource | undefined;
  /** Size of the signing session pool. */
  readonly maxSessions: number;
}

/** Default pool size: libuv runs four async calls at a time unless UV_THREADPOOL_SIZE says otherwise. */
export const DEFAULT_MAX_SESSIONS = 4;

const PATH_ATTRIBUTES = new Set([
  'token',
  'serial',
  'slot-id',
  'object',
  'id',
  'type',
  'manufacturer',
  'model',
  'library-manufacturer',
  'library-description',
  'library-version',
  'slot-description',
  'slot-manufacturer',
]);
const QUERY_ATTRIBUTES = new Set(['module-path', 'module-name', 'pin-source', 'pin-value', 'max-sessions']);

function uriError(message: string): HsmError {
  return new HsmError('ERR_HSM_URI', `PKCS#11 URI: ${message}`);
}

function decodeText(value: string | undefined, name: string): string | undefined {
  if (value === undefined) return undefined;
  try {
    return decodeURIComponent(value);
  } catch {
    throw uriError(`attribute "${name}" has a malformed percent-encoding`);
  }
}

function parsePinSource(value: string): PinSource {
  if (value.startsWith('env:')) {
    const name = value.slice(4);
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(name))
      throw uriError(`pin-source "env:${name}" does not name an environment variable`);
    return { kind: 'env', name };
  }
  let path = value;
  if (value.startsWith('file://')) path = value.slice('file://'.length);
  else if (value.startsWith('file:')) path = value.slice('file:'.length);
  if (!path.startsWith('/')) {
    throw uriError('pin-source must be file:/absolute/path, /absolute/path or env:NAME');
  }
  return { kind: 'file', path };
}

/** Parses and checks a PKCS#11 URI; every mistake is an ERR_HSM_URI naming the attribute. */
export function parsePkcs11Uri(uri: string): Pkcs11Uri {
  if (!uri.startsWith('pkcs11:')) throw uriError('must start with "pkcs11:"');
  const body = uri.slice('pkcs11:'.length);
  const queryAt = body.indexOf('?');
  const pathPart = queryAt === -1 ? body : body.slice(0, queryAt);
  const queryPart = queryAt === -1 ? '' : body.slice(queryAt + 1);
  const raw = new Map<string, string>();
  const attributes = {
    get: (name: string) => decodeText(raw.get(name), name),
    has: (name: string) => raw.has(name),
  };
  const take = (part: string, separator: string, allowed: ReadonlySet<string>) => {
    for (const item of part.split(separator)) {
      if (item === '') continue;
      const eq = item.indexOf('=');
      if (eq <= 0) throw uriError(`"${item.slice(0, 40)}" is not name=value`);
      const name = item.slice(0, eq).toLowerCase();
      if (!allowed.has(name) && !QUERY_ATTRIBUTES.has(name) && !name.startsWith('x-')) {
        throw uriError(`unknown attribute "${name}"`);
      }
      if (raw.has(name)) throw uriError(`attribute "${name}" is given twice`);
      // Kept percent-encoded: `id` is bytes, every other attribute is text and is decoded when read.
      raw.set(name, item.slice(eq + 1));
    }
  };
  take(pathPart, ';', PATH_ATTRIBUTES);
  take(queryPart, '&', QUERY_ATTRIBUTES);

  if (attributes.has('pin-value')) {
    throw uriError(
      'pin-value is refused because it puts the PIN on command lines and in logs; use pin-source=file:/path or pin-source=env:NAME',
    );
  }
  const modulePath = attributes.get('module-path');
  if (modulePath === undefined || modulePath === '') {
    throw uriError(
      'module-path is missing; add module-path=/path/to/pkcs11-module.so (SoftHSM: /usr/lib/softhsm/libsofthsm2.so)',
    );
  }
  const token = attributes.get('token');
  const serial = attributes.get('serial');
  const slot = attributes.get('slot-id');
  if (token === undefined && serial === undefined && slot === undefined) {
    throw uriError('name the token with token=LABEL, serial=SERIAL or slot-id=N');
  }
  let slotId: number | undefined;
  if (slot !== undefined) {
    if (!/^\d+$/.test(slot)) throw uriError(`slot-id "${slot}" is not a decimal number`);
    slotId = Number(slot);
  }
  const sessions = attributes.get('max-sessions');
  let maxSessions = DEFAULT_MAX_SESSIONS;
  if (sessions !== undefined) {
    if (!/^\d+$/.test(sessions) || Number(sessions) < 1 || Number(sessions) > 256) {
      throw uriError(`max-sessions "${sessions}" must be a number from 1 to 256`);
    }
    maxSessions = Number(sessions);
  }
  const pin = attributes.get('pin-source');
  const id = raw.get('id');
  return describe({
    modulePath,
    token,
    serial,
    slotId,
    object: attributes.get('object'),
    id: id === undefined ? undefined : percentBytes(id),
    pinSource: pin === undefined ? undefined : parsePinSource(pin),
    maxSessions,
  });
}

/** `id` is a byte string (RFC 7512 section 2.3): percent-escapes are bytes, other characters ASCII. */
function percentBytes(text: string): Buffer {
  const bytes: number[] = [];
  for (let i = 0; i < text.length; i++) {
    if (text[i] === '%') {
      const hex = text.slice(i + 1, i + 3);
      if (!/^[0-9a-fA-F]{2}$/.test(hex)) throw uriError('attribute "id" has a malformed percent-encoding');
      bytes.push(Number.parseInt(hex, 16));
      i += 2;
    } else {
      bytes.push(text.charCodeAt(i) & 0xff);
    }
  }
  return Buffer.from(bytes);
}

/** Renders the URI back (without any PIN, which it never holds), for messages and `hsm check`. */
export function formatPkcs11Uri(uri: Pkcs11Uri): string {
  const path: string[] = [];
  if (uri.token !== undefined) path.push(`token=${encodeURIComponent(uri.token)}`);
  if (uri.serial !== undefined) path.push(`serial=${encodeURIComponent(uri.serial)}`);
  if (uri.slotId !== undefined) path.push(`slot-id=${uri.slotId}`);
  if (uri.object !== undefined) path.push(`object=${encodeURIComponent(uri.object)}`);
  if (uri.id !== undefined)
    path.push(`id=${[...uri.id].map((b) => `%${b.toString(16).padStart(2, '0')}`).join('')}`);
  const query = [`module-path=${uri.modulePath}`];
  if (uri.pinSource !== undefined) {
    query.push(
      `pin-source=${uri.pinSource.kind === 'env' ? `env:${uri.pinSource.name}` : `file:${uri.pinSource.path}`}`,
    );
  }
  if (uri.maxSessions !== DEFAULT_MAX_SESSIONS) query.push(`max-sessions=${uri.maxSessions}`);
  return `pkcs11:${path.join(';')}?${query.join('&')}`;
}

/** Gives the config object a readable, PIN-free rendering in logs, `String()` and util.inspect. */
function describe(uri: Pkcs11Uri): Pkcs11Uri {
  const text = (): string => formatPkcs11Uri(uri);
  Object.defineProperties(uri, {
    toString: { value: text, enumerable: false },
    [inspect.custom]: { value: () => `Pkcs11Uri<${text()}>`, enumerable: false },
  });
  return Object.freeze(uri);
}
