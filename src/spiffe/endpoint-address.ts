import { isIP } from 'node:net';
import { SpiffeError } from './errors.js';

/** Name of the environment variable that locates the Workload API (Workload Endpoint §4). */
export const ENDPOINT_SOCKET_ENV = 'SPIFFE_ENDPOINT_SOCKET';

/** A parsed Workload API address: a Unix socket path, or a TCP IP address and port. */
export type EndpointAddress =
  | { readonly scheme: 'unix'; readonly path: string }
  | { readonly scheme: 'tcp'; readonly host: string; readonly port: number };

const SCHEME = /^([A-Za-z][A-Za-z0-9+.-]*):(.*)$/s;

/**
 * Parses a `SPIFFE_ENDPOINT_SOCKET` value strictly per SPIFFE Workload Endpoint §4:
 * `unix:///absolute/path` (no authority, only scheme and path) or `tcp://<ip>:<port>` (an IP
 * address, never a name; a port; nothing else). Unlike go-spiffe, `unix://name` is rejected because
 * the spec forbids an authority.
 *
 * @throws SpiffeError with an `ERR_ENDPOINT_*` code naming the rule.
 * @example
 * ```ts
 * parseEndpointAddress('unix:///run/spire/agent.sock'); // { scheme: 'unix', path: '/run/spire/agent.sock' }
 * parseEndpointAddress('tcp://127.0.0.1:8000');        // { scheme: 'tcp', host: '127.0.0.1', port: 8000 }
 * ```
 */
export function parseEndpointAddress(text: string): EndpointAddress {
  if (text === '') {
    throw new SpiffeError(
      'ERR_ENDPOINT_EMPTY',
      `workload endpoint address is empty; set ${ENDPOINT_SOCKET_ENV} to "unix:///path/to/socket" or "tcp://<ip>:<port>"`,
    );
  }
  const match = SCHEME.exec(text);
  const scheme = match?.[1]?.toLowerCase();
  const rest = match?.[2];
  if (scheme === undefined || rest === undefined) {
    throw new SpiffeError(
      'ERR_ENDPOINT_NOT_URI',
      `workload endpoint address "${text}" is not a URI; Workload Endpoint §4 requires "unix:///path" or "tcp://<ip>:<port>"`,
    );
  }
  if (scheme !== 'unix' && scheme !== 'tcp') {
    throw new SpiffeError(
      'ERR_ENDPOINT_BAD_SCHEME',
      `workload endpoint address "${text}" has scheme "${scheme}"; Workload Endpoint §4 allows only "unix" and "tcp"`,
    );
  }
  const query = rest.indexOf('?');
  const fragment = rest.indexOf('#');
  if (query !== -1 && (fragment === -1 || query < fragment)) {
    throw new SpiffeError(
      'ERR_ENDPOINT_QUERY',
      `workload endpoint address "${text}" has a query; Workload Endpoint §4 allows no query`,
    );
  }
  if (fragment !== -1) {
    throw new SpiffeError(
      'ERR_ENDPOINT_FRAGMENT',
      `workload endpoint address "${text}" has a fragment; Workload Endpoint §4 allows no fragment`,
    );
  }
  const hasAuthority = rest.startsWith('//');
  const afterSlashes = hasAuthority ? rest.slice(2) : rest;
  const authorityEnd = afterSlashes.indexOf('/');
  const authority = hasAuthority
    ? authorityEnd === -1
      ? afterSlashes
      : afterSlashes.slice(0, authorityEnd)
    : '';
  const path = hasAuthority ? (authorityEnd === -1 ? '' : afterSlashes.slice(authorityEnd)) : rest;
  if (authority.includes('@')) {
    throw new SpiffeError(
      'ERR_ENDPOINT_USERINFO',
      `workload endpoint address "${text}" has userinfo; Workload Endpoint §4 allows none`,
    );
  }
  return scheme === 'unix' ? parseUnix(text, authority, path) : parseTcp(text, hasAuthority, authority, path);
}

/**
 * The Workload API address from the environment (Workload Endpoint §4, E-10): `SPIFFE_ENDPOINT_SOCKET`
 * parsed by {@link parseEndpointAddress}. The caller passes the environment (usually `process.env`),
 * which keeps this library free of I/O and makes it testable.
 *
 * @throws SpiffeError `ERR_ENDPOINT_EMPTY` when the variable is unset or empty, or the parse error.
 */
export function endpointAddressFromEnv(env: Readonly<Record<string, string | undefined>>): EndpointAddress {
  return parseEndpointAddress(env[ENDPOINT_SOCKET_ENV] ?? '');
}

function parseUnix(text: string, authority: string, path: string): EndpointAddress {
  if (authority !== '') {
    throw new SpiffeError(
      'ERR_ENDPOINT_UNIX_AUTHORITY',
      `workload endpoint address "${text}" has an authority ("${authority}"); Workload Endpoint §4 forbids one for unix: write "unix:///absolute/path"`,
    );
  }
  if (!path.startsWith('/') || path === '/') {
    throw new SpiffeError(
      'ERR_ENDPOINT_UNIX_NOT_ABSOLUTE',
      `workload endpoint address "${text}" does not hold an absolute socket path; Workload Endpoint §4 requires "unix:///absolute/path"`,
    );
  }
  let decoded: string;
  try {
    // The URI path is percent-encoded (RFC 3986); the socket path is the decoded form.
    decoded = decodeURIComponent(path);
  } catch {
    throw new SpiffeError(
      'ERR_ENDPOINT_NOT_URI',
      `workload endpoint address "${text}" has a malformed percent-encoding in its path (RFC 3986 §2.1)`,
    );
  }
  return { scheme: 'unix', path: decoded };
}

function parseTcp(text: string, hasAuthority: boolean, authority: string, path: string): EndpointAddress {
  if (!hasAuthority || authority === '') {
    throw new SpiffeError(
      'ERR_ENDPOINT_TCP_NO_HOST',
      `workload endpoint address "${text}" has no host; Workload Endpoint §4 requires "tcp://<ip>:<port>"`,
    );
  }
  if (path !== '') {
    throw new SpiffeError(
      'ERR_ENDPOINT_TCP_PATH',
      `workload endpoint address "${text}" has a path; Workload Endpoint §4 allows only scheme, IP and port for tcp`,
    );
  }
  let host: string;
  let portText: string | undefined;
  if (authority.startsWith('[')) {
    const close = authority.indexOf(']');
    host = close === -1 ? authority : authority.slice(1, close);
    const after = close === -1 ? '' : authority.slice(close + 1);
    portText = after.startsWith(':') ? after.slice(1) : undefined;
  } else {
    const colon = authority.lastIndexOf(':');
    host = colon === -1 ? authority : authority.slice(0, colon);
    portText = colon === -1 ? undefined : authority.slice(colon + 1);
  }
  if (host === '') {
    throw new SpiffeError(
      'ERR_ENDPOINT_TCP_NO_HOST',
      `workload endpoint address "${text}" has no host; Workload Endpoint §4 requires "tcp://<ip>:<port>"`,
    );
  }
  if (isIP(host) === 0) {
    throw new SpiffeError(
      'ERR_ENDPOINT_TCP_HOST_NOT_IP',
      `workload endpoint address "${text}" names host "${host}"; Workload Endpoint §4 requires an IP address, not a name`,
    );
  }
  if (portText === undefined || portText === '') {
    throw new SpiffeError(
      'ERR_ENDPOINT_TCP_NO_PORT',
      `workload endpoint address "${text}" has no port; Workload Endpoint §4 requires "tcp://<ip>:<port>"`,
    );
  }
  const port = /^[0-9]{1,5}$/.test(portText) ? Number(portText) : Number.NaN;
  if (!(port >= 1 && port <= 65535)) {
    throw new SpiffeError(
      'ERR_ENDPOINT_TCP_BAD_PORT',
      `workload endpoint address "${text}" has port "${portText}"; a port is a number from 1 to 65535`,
    );
  }
  return { scheme: 'tcp', host, port };
}
