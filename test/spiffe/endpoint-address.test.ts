import { describe, expect, it } from 'vitest';
import { endpointAddressFromEnv, parseEndpointAddress } from '../../src/spiffe/endpoint-address.js';
import type { SpiffeErrorCode } from '../../src/spiffe/errors.js';
import { expectSpiffeError } from '../helpers/spiffe-errors.js';

describe('parseEndpointAddress accepts (E-11..E-13)', () => {
  it.each([
    ['unix:///run/ironroot/agent.sock', { scheme: 'unix', path: '/run/ironroot/agent.sock' }],
    ['unix:/tmp/agent.sock', { scheme: 'unix', path: '/tmp/agent.sock' }],
    ['unix:///tmp/my%20agent.sock', { scheme: 'unix', path: '/tmp/my agent.sock' }],
    ['tcp://127.0.0.1:8000', { scheme: 'tcp', host: '127.0.0.1', port: 8000 }],
    ['tcp://[::1]:8000', { scheme: 'tcp', host: '::1', port: 8000 }],
  ])('%s', (text, expected) => {
    expect(parseEndpointAddress(text)).toEqual(expected);
  });
});

describe('parseEndpointAddress rejects', () => {
  const cases: [string, string, SpiffeErrorCode, RegExp][] = [
    ['empty', '', 'ERR_ENDPOINT_EMPTY', /empty/],
    ['not a URI', '/run/agent.sock', 'ERR_ENDPOINT_NOT_URI', /not a URI/],
    ['other scheme (E-11)', 'http://127.0.0.1:80', 'ERR_ENDPOINT_BAD_SCHEME', /only "unix" and "tcp"/],
    [
      'unix with authority (E-12)',
      'unix://agent.sock',
      'ERR_ENDPOINT_UNIX_AUTHORITY',
      /forbids one for unix/,
    ],
    ['unix with host and path (E-12)', 'unix://host/run/a.sock', 'ERR_ENDPOINT_UNIX_AUTHORITY', /authority/],
    ['unix relative (E-12)', 'unix:agent.sock', 'ERR_ENDPOINT_UNIX_NOT_ABSOLUTE', /absolute/],
    ['unix without path (E-12)', 'unix://', 'ERR_ENDPOINT_UNIX_NOT_ABSOLUTE', /absolute/],
    ['unix with userinfo', 'unix://u@/a.sock', 'ERR_ENDPOINT_USERINFO', /userinfo/],
    ['unix with query (E-12)', 'unix:///a.sock?x=1', 'ERR_ENDPOINT_QUERY', /query/],
    ['unix with fragment (E-12)', 'unix:///a.sock#f', 'ERR_ENDPOINT_FRAGMENT', /fragment/],
    [
      'tcp with a name (E-13)',
      'tcp://localhost:8000',
      'ERR_ENDPOINT_TCP_HOST_NOT_IP',
      /IP address, not a name/,
    ],
    ['tcp without port (E-13)', 'tcp://127.0.0.1', 'ERR_ENDPOINT_TCP_NO_PORT', /no port/],
    ['tcp with empty port (E-13)', 'tcp://127.0.0.1:', 'ERR_ENDPOINT_TCP_NO_PORT', /no port/],
    ['tcp with bad port', 'tcp://127.0.0.1:70000', 'ERR_ENDPOINT_TCP_BAD_PORT', /1 to 65535/],
    ['tcp with path (E-13)', 'tcp://127.0.0.1:8000/foo', 'ERR_ENDPOINT_TCP_PATH', /only scheme, IP and port/],
    ['tcp opaque', 'tcp:127.0.0.1:8000', 'ERR_ENDPOINT_TCP_NO_HOST', /no host/],
    ['tcp without host', 'tcp://:8000', 'ERR_ENDPOINT_TCP_NO_HOST', /no host/],
    ['tcp with userinfo (E-13)', 'tcp://u@127.0.0.1:8000', 'ERR_ENDPOINT_USERINFO', /userinfo/],
    ['unix with bad percent-encoding', 'unix:///a%zz.sock', 'ERR_ENDPOINT_NOT_URI', /percent-encoding/],
    ['tcp with query (E-13)', 'tcp://127.0.0.1:8000?x', 'ERR_ENDPOINT_QUERY', /query/],
  ];
  it.each(cases)('%s: %s', (_name, text, code, rule) => {
    expectSpiffeError(() => parseEndpointAddress(text), code, rule);
  });
});

describe('endpointAddressFromEnv (E-10)', () => {
  it('reads SPIFFE_ENDPOINT_SOCKET from the given environment', () => {
    expect(endpointAddressFromEnv({ SPIFFE_ENDPOINT_SOCKET: 'unix:///run/a.sock' })).toEqual({
      scheme: 'unix',
      path: '/run/a.sock',
    });
  });

  it('reports an unset variable by name', () => {
    expectSpiffeError(() => endpointAddressFromEnv({}), 'ERR_ENDPOINT_EMPTY', /SPIFFE_ENDPOINT_SOCKET/);
  });
});
