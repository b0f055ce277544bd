/**
 * TCP listen addresses: split for `listen`, and failures told by the config key whose address could not be bound.
 *
 * @module
 */
import { HostError } from './errors.js';

/**
 * Runs `bind` (which listens on `address`); an EADDRINUSE or EADDRNOTAVAIL/EACCES failure becomes a
 * {@link HostError} naming `key` and the address. grpc-js reports the errno only in its message.
 */
export async function bindAddress<T>(key: string, address: string, bind: () => Promise<T>): Promise<T> {
  try {
    return await bind();
  } catch (error) {
    const text = `${(error as { code?: unknown }).code ?? ''} ${(error as Error).message}`;
    if (text.includes('EADDRINUSE'))
      throw new HostError(
        'ERR_ADDRESS_IN_USE',
        key,
        `${key} ${address} is in use by another process; stop it, or choose another port for ${key}`,
        { cause: error },
      );
    if (text.includes('EADDRNOTAVAIL') || text.includes('EACCES'))
      throw new HostError(
        'ERR_ADDRESS_UNAVAILABLE',
        key,
        `${key} ${address} cannot be bound (${text.includes('EACCES') ? 'permission denied: ports below 1024 need privileges' : 'not an address of this host'}); choose another ${key}`,
        { cause: error },
      );
    throw error;
  }
}

/** Splits a validated `host:port` (or `[v6]:port`) into what `listen` takes. */
export function splitHostPort(address: string): { host: string; port: number } {
  const separator = address.lastIndexOf(':');
  return {
    host: address.slice(0, separator).replace(/^\[(.*)\]$/, '$1'),
    port: Number(address.slice(separator + 1)),
  };
}
