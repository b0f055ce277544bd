import { X509Certificate } from 'node:crypto';
import { mkdtempSync, readFileSync } from 'node:fs';
import { createServer as createHttpsServer, type Server as HttpsServer } from 'node:https';
import { createServer as createTcpServer, type Socket, type Server as TcpServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FederationError } from '../../src/server/federation/errors.js';
import { type FetchBundleOptions, fetchFederatedBundle } from '../../src/server/federation/fetch.js';
import { SpiffeBundle, TrustDomain } from '../../src/spiffe/index.js';
import { cli, freePort, startTestServer, type TestServer } from '../helpers/server.js';
import { opensslCert } from '../helpers/x509.js';

const FIXTURE = readFileSync(
  new URL('../fixtures/federation/spire-domain1.test.json', import.meta.url),
  'utf8',
);
const DOMAIN1 = TrustDomain.parse('domain1.test');
const SERVER_ID = 'spiffe://example.org/ironroot/server';

/** Resolves to the FederationError the fetch was refused with; fails the test when it succeeded. */
async function refusal(options: FetchBundleOptions): Promise<FederationError> {
  try {
    await fetchFederatedBundle(options);
  } catch (error) {
    if (error instanceof FederationError) return error;
    throw error;
  }
  throw new Error(`fetching ${options.bundleEndpointUrl} succeeded; a refusal was expected`);
}

function listen(server: HttpsServer | TcpServer): Promise<number> {
  return new Promise((resolve) => {
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      resolve(typeof address === 'object' && address ? address.port : 0);
    });
  });
}

/** Answers for the https_web endpoint, by path. */
const ROUTES: Record<string, { status?: number; headers?: Record<string, string>; body: string | Buffer }> = {
  '/fixture': { headers: { 'content-type': 'application/json' }, body: FIXTURE },
  '/redirect': { status: 302, headers: { location: '/fixture' }, body: '' },
  '/missing': { status: 404, headers: { 'content-type': 'application/json' }, body: '{}' },
  '/html': { headers: { 'content-type': 'text/html' }, body: '<html>bundle</html>' },
  '/not-json': { headers: { 'content-type': 'application/json' }, body: 'keys: []' },
  '/huge': {
    headers: { 'content-type': 'application/json' },
    body: Buffer.alloc(2 * 1024 * 1024, 0x20),
  },
  '/plain-jwks': {
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({
      keys: [
        {
          kty: 'EC',
          crv: 'P-256',
          kid: 'k1',
          x: 'fK-wKTnKL7KFLM27lqq5DC-bxrVaH6rDV-IcCSEOeL4',
          y: 'wq-g3TQWxYlV51TCPH030yXsRxvujD4hUUaIQrXk4KI',
        },
      ],
    }),
  },
  '/bad-certificate': {
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ keys: [{ kty: 'EC', use: 'x509-svid', x5c: ['AAAA'] }] }),
  },
};

describe('fetching a foreign bundle', () => {
  let ironroot: TestServer;
  let bundlePort: number;
  let ownBundle: SpiffeBundle;
  let dir: string;
  let webCa: string;
  let web: HttpsServer;
  let webPort: number;
  let otherHost: HttpsServer;
  let otherHostPort: number;
  let silent: TcpServer;
  let silentPort: number;
  const sockets: Socket[] = [];

  beforeAll(async () => {
    bundlePort = await freePort();
    ironroot = await startTestServer({
      bundle_endpoint: { address: `127.0.0.1:${bundlePort}`, profile: 'https_spiffe', refresh_hint: '90s' },
    });
    const shown = await cli(['bundle', 'show', '--admin-socket', ironroot.socket, '--format', 'spiffe']);
    ownBundle = SpiffeBundle.parse(TrustDomain.parse('example.org'), shown.stdout);

    dir = mkdtempSync(join(tmpdir(), 'ironroot-fed-fetch-'));
    const ca = { cert: join(dir, 'ca.pem'), key: join(dir, 'ca.key') };
    await opensslCert({
      ...ca,
      subject: '/CN=fed-fetch test CA',
      extensions: ['basicConstraints=critical,CA:TRUE', 'keyUsage=critical,keyCertSign'],
    });
    webCa = readFileSync(ca.cert, 'utf8');
    const leaf = (name: string, san: string) => {
      const files = { cert: join(dir, `${name}.pem`), key: join(dir, `${name}.key`) };
      return opensslCert({
        ...files,
        subject: `/CN=${name}`,
        extensions: ['basicConstraints=critical,CA:FALSE', `subjectAltName=${san}`],
        issuer: ca,
      }).then(() => ({ cert: readFileSync(files.cert), key: readFileSync(files.key) }));
    };
    web = createHttpsServer(await leaf('web', 'IP:127.0.0.1'), (req, res) => {
      const route = ROUTES[req.url ?? ''];
      if (route === undefined) {
        res.writeHead(500).end();
        return;
      }
      res.writeHead(route.status ?? 200, route.headers).end(route.body);
    });
    webPort = await listen(web);
    otherHost = createHttpsServer(await leaf('other-host', 'DNS:bundle.elsewhere.test'), (_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' }).end(FIXTURE);
    });
    otherHostPort = await listen(otherHost);
    // Accepts connections and never says a word, not even the TLS handshake.
    silent = createTcpServer((socket) => {
      sockets.push(socket);
    });
    silentPort = await listen(silent);
  });
  afterAll(async () => {
    for (const socket of sockets) socket.destroy();
    await Promise.all(
      [web, otherHost, silent].map(
        (s) => new Promise((resolve) => (s ? s.close(resolve) : resolve(undefined))),
      ),
    );
    await ironroot?.stop();
  });

  const spiffeOptions = (): FetchBundleOptions => ({
    trustDomain: 'example.org',
    bundleEndpointUrl: `https://127.0.0.1:${bundlePort}/`,
    profile: 'https_spiffe',
    endpointSpiffeId: SERVER_ID,
    currentBundle: ownBundle,
    timeoutMs: 10_000,
  });
  const webOptions = (path: string, trustDomain = 'domain1.test'): FetchBundleOptions => ({
    trustDomain,
    bundleEndpointUrl: `https://127.0.0.1:${webPort}${path}`,
    profile: 'https_web',
    webCa,
    timeoutMs: 10_000,
  });

  describe('https_spiffe, from a real ironroot server', () => {
    it('fetches the bundle, with spiffe_sequence and spiffe_refresh_hint, authenticated by the stored bundle', async () => {
      const fetched = await fetchFederatedBundle(spiffeOptions());
      expect(fetched.marshal()).toBe(ownBundle.marshal());
      expect(fetched.refreshHintSeconds).toBe(90);
      expect(fetched.sequenceNumber).toBe(ownBundle.sequenceNumber);
      expect(fetched.sequenceNumber).toBeGreaterThan(0n);
      expect(fetched.x509Authorities).toHaveLength(1);
      expect(fetched.jwtAuthorities.size).toBe(1);
    });

    it('refuses an endpoint whose SVID names another SPIFFE ID', async () => {
      const error = await refusal({
        ...spiffeOptions(),
        endpointSpiffeId: 'spiffe://example.org/bundle-endpoint',
      });
      expect(error.code).toBe('ERR_FEDERATION_ENDPOINT_ID_MISMATCH');
      expect(error.message).toContain(SERVER_ID);
      expect(error.message).toContain('spiffe://example.org/bundle-endpoint');
      expect(error.url).toBe(`https://127.0.0.1:${bundlePort}/`);
    });

    it('refuses an endpoint whose certificate does not chain to the stored bundle', async () => {
      const stranger = new SpiffeBundle(TrustDomain.parse('example.org'), {
        x509Authorities: [new X509Certificate(webCa)],
      });
      const error = await refusal({ ...spiffeOptions(), currentBundle: stranger });
      expect(error.code).toBe('ERR_FEDERATION_TLS');
      expect(error.message).toContain(`https://127.0.0.1:${bundlePort}/`);
    });

    it('refuses without a stored bundle or with an endpoint ID outside the trust domain', async () => {
      const { currentBundle: _none, ...withoutBundle } = spiffeOptions();
      expect((await refusal(withoutBundle)).code).toBe('ERR_FEDERATION_BUNDLE_MISSING');
      const outside = await refusal({
        ...spiffeOptions(),
        endpointSpiffeId: 'spiffe://elsewhere.test/ironroot/server',
      });
      expect(outside.code).toBe('ERR_FEDERATION_ENDPOINT_ID_INVALID');
    });

    it('refuses http:// (and any other scheme, or credentials, which it does not repeat, nor a query) before connecting', async () => {
      const error = await refusal({
        ...spiffeOptions(),
        bundleEndpointUrl: `http://127.0.0.1:${bundlePort}/`,
      });
      expect(error.code).toBe('ERR_FEDERATION_URL_NOT_HTTPS');
      expect(error.message).toContain(`http://127.0.0.1:${bundlePort}/`);
      for (const url of [`ftp://127.0.0.1:${bundlePort}/`, '127.0.0.1/bundle']) {
        expect((await refusal({ ...spiffeOptions(), bundleEndpointUrl: url })).code).toBe(
          'ERR_FEDERATION_URL_NOT_HTTPS',
        );
      }
      const withPassword = await refusal({
        ...spiffeOptions(),
        bundleEndpointUrl: `https://user:s3cret@127.0.0.1:${bundlePort}/`,
      });
      expect(withPassword.code).toBe('ERR_FEDERATION_URL_NOT_HTTPS');
      expect(withPassword.message).not.toContain('s3cret');
      expect(withPassword.url).toBe(`https://127.0.0.1:${bundlePort}/`);
      const withToken = await refusal({
        ...spiffeOptions(),
        bundleEndpointUrl: `http://127.0.0.1:${bundlePort}/bundle?token=s3cret#frag`,
      });
      expect(withToken.message).not.toContain('s3cret');
      expect(withToken.url).toBe(`http://127.0.0.1:${bundlePort}/bundle?…`);
    });
  });

  describe('https_web, with an openssl-made CA and serving certificate', () => {
    it('parses the SPIRE-published fixture as a SPIFFE bundle', () => {
      const bundle = SpiffeBundle.parse(DOMAIN1, FIXTURE);
      expect(bundle.x509Authorities).toHaveLength(1);
      expect(bundle.x509Authorities[0]?.subjectAltName).toBe('URI:spiffe://domain1.test');
      expect(bundle.jwtAuthorities.size).toBe(0);
      expect(bundle.sequenceNumber).toBe(42n);
      expect(bundle.refreshHintSeconds).toBe(60);
    });

    it('fetches the SPIRE-published fixture as the federated bundle of domain1.test', async () => {
      const fetched = await fetchFederatedBundle(webOptions('/fixture'));
      expect(fetched.trustDomain.name).toBe('domain1.test');
      expect(fetched.marshal()).toBe(SpiffeBundle.parse(DOMAIN1, FIXTURE).marshal());
    });

    it('verifies the host name: a certificate for another name is refused', async () => {
      const error = await refusal({
        ...webOptions('/fixture'),
        bundleEndpointUrl: `https://127.0.0.1:${otherHostPort}/`,
      });
      expect(error.code).toBe('ERR_FEDERATION_TLS');
      expect(error.message).toContain('ERR_TLS_CERT_ALTNAME_INVALID');
    });

    it('uses the system roots by default, which do not hold the test CA', async () => {
      const { webCa: _ca, ...systemRoots } = webOptions('/fixture');
      expect((await refusal(systemRoots)).code).toBe('ERR_FEDERATION_TLS');
    });

    it('does not follow a redirect, and names where it pointed', async () => {
      const error = await refusal(webOptions('/redirect'));
      expect(error.code).toBe('ERR_FEDERATION_REDIRECT');
      expect(error.message).toContain('302 to /fixture');
    });

    it('refuses a status other than 200', async () => {
      expect((await refusal(webOptions('/missing'))).code).toBe('ERR_FEDERATION_HTTP_STATUS');
    });

    it('refuses an answer over the size cap', async () => {
      const error = await refusal(webOptions('/huge'));
      expect(error.code).toBe('ERR_FEDERATION_TOO_LARGE');
      expect(error.message).toContain(String(1024 * 1024));
    });

    it('refuses content that is not JSON, by type and by content', async () => {
      const html = await refusal(webOptions('/html'));
      expect(html.code).toBe('ERR_FEDERATION_NOT_JSON');
      expect(html.message).toContain('text/html');
      expect((await refusal(webOptions('/not-json'))).code).toBe('ERR_FEDERATION_NOT_JSON');
    });

    it("refuses another trust domain's bundle", async () => {
      const error = await refusal(webOptions('/fixture', 'example.org'));
      expect(error.code).toBe('ERR_FEDERATION_WRONG_TRUST_DOMAIN');
      expect(error.message).toContain('spiffe://domain1.test');
    });

    it('refuses keys without a SPIFFE use and an authority that is not a certificate', async () => {
      const jwks = await refusal(webOptions('/plain-jwks'));
      expect(jwks.code).toBe('ERR_FEDERATION_BAD_BUNDLE');
      expect(jwks.message).toContain('x509-svid or jwt-svid');
      const badCert = await refusal(webOptions('/bad-certificate'));
      expect(badCert.code).toBe('ERR_FEDERATION_BAD_BUNDLE');
      expect(badCert.message).toContain('ERR_BUNDLE_BAD_CERTIFICATE');
    });

    it('gives up on a server that never answers', async () => {
      const error = await refusal({
        ...webOptions('/fixture'),
        bundleEndpointUrl: `https://127.0.0.1:${silentPort}/`,
        timeoutMs: 300,
      });
      expect(error.code).toBe('ERR_FEDERATION_TIMEOUT');
      expect(sockets.length).toBeGreaterThan(0);
    });
  });
});
