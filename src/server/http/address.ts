/** Splits a validated `host:port` (or `[v6]:port`) into what `listen` takes. */
export function splitHostPort(address: string): { host: string; port: number } {
  const separator = address.lastIndexOf(':');
  return {
    host: address.slice(0, separator).replace(/^\[(.*)\]$/, '$1'),
    port: Number(address.slice(separator + 1)),
  };
}
