import { execFile } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { request } from 'node:https';
import { join } from 'node:path';
import { TLSSocket } from 'node:tls';
import { promisify } from 'node:util';
import { createRemoteJWKSet, jwtVerify } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mintX509Ca, SpiffeBundle, TrustDomain } from '../../src/spiffe/index.js';
import { type CliResult, cli, freePort, startTestServer, type TestServer } from '../helpers/server.js';
import { createSoftHsm, type SoftHsm } from '../helpers/softhsm.js';
import { p256, withUndecodableKey } from '../helpers/x509.js';

const run = promisify(execFile);
const TD = 'spiffe://example.org';
const ISSUER = 'https://oidc.example.org';

describe('CA with keys on a SoftHSM token, through the built CLI', () => {
  let hsm: SoftHsm;
  let server: TestServer;
  let oidcPort: number;
  let bundlePort: number;
  const admin = () => ['--admin-socket', server.socket];
  const bundleSet = (id: string, file: string, format: 'pem' | 'spiffe') =>
    cli(['bundle', 'set', ...admin(), '--id', id, '--path', file, '--format', format]);
  const ok = (result: CliResult): string => {
    expect(result.stderr).toBe('');
    expect(result.code).toBe(0);
    return result.stdout;
  };
  const authorities = async (kind: 'x509' | 'jwt') =>
    (
      JSON.parse(ok(await cli(['localauthority', kind, 'show', ...admin(), '--output', 'json']))) as {
        authorities: { authority_id: string; state: string }[];
      }
    ).authorities;
  const mintAndVerify = async (name: string) => {
    const dir = join(server.dir, name);
    ok(
      await cli([
        'x509',
        'mint',
        ...admin(),
        '--spiffe-id',
        `${TD}/${name}`,
        '--dns',
        `${name}.example.org`,
        '--write',
        dir,
      ]),
    );
    const bundle = join(server.dir, `${name}-bundle.pem`);
    writeFileSync(bundle, ok(await cli(['bundle', 'show', ...admin(), '--format', 'pem'])));
    return run('openssl', ['verify', '-CAfile', bundle, join(dir, 'svid.pem')]);
  };

  beforeAll(async () => {
    hsm = await createSoftHsm('ironroot-ca');
    oidcPort = await freePort();
    bundlePort = await freePort();
    server = await startTestServer({
      key_manager: hsm.uri(),
      development: false,
      jwt_issuer: ISSUER,
      oidc_discovery: { address: `127.0.0.1:${oidcPort}` },
      bundle_endpoint: { address: `127.0.0.1:${bundlePort}`, profile: 'https_spiffe', refresh_hint: '2m' },
    });
  });
  afterAll(async () => {
    await server.stop();
    await hsm.cleanup();
  });

  it('keeps the CA and JWT keys on the token', async () => {
    const ids = [...(await authorities('x509')), ...(await authorities('jwt'))].map((a) => a.authority_id);
    expect(ids).toHaveLength(2);
    const { stdout } = await hsm.tool('--list-objects', '--type', 'privkey');
    for (const id of ids) expect(stdout).toContain(id);
  });

  it('mints an X.509-SVID that openssl verifies against "bundle show --format pem"', async () => {
    const { stdout } = await mintAndVerify('web');
    expect(stdout.trim()).toBe(`${join(server.dir, 'web', 'svid.pem')}: OK`);
    const leaf = new X509Certificate(readFileSync(join(server.dir, 'web', 'svid.pem')));
    expect(leaf.subjectAltName).toBe(`URI:${TD}/web, DNS:web.example.org`);
  });

  it('mints a JWT-SVID that verifies against the OIDC JWKS fetched over HTTP', async () => {
    const discovery = (await (
      await fetch(`http://127.0.0.1:${oidcPort}/.well-known/openid-configuration`)
    ).json()) as {
      issuer: string;
      jwks_uri: string;
    };
    expect(discovery).toMatchObject({ issuer: ISSUER, jwks_uri: `${ISSUER}/keys` });
    const token = ok(
      await cli([
        'jwt',
        'mint',
        ...admin(),
        '--spiffe-id',
        `${TD}/api`,
        '--audience',
        'reports',
        '--ttl',
        '120',
      ]),
    ).trim();
    // The issuer names a public URL; the test reaches the same listener on loopback.
    const jwks = createRemoteJWKSet(new URL(`http://127.0.0.1:${oidcPort}/keys`));
    const { payload, protectedHeader } = await jwtVerify(token, jwks, {
      issuer: ISSUER,
      audience: 'reports',
    });
    expect(payload.sub).toBe(`${TD}/api`);
    expect((payload.exp ?? 0) - (payload.iat ?? 0)).toBe(120);
    expect(protectedHeader.kid).toBe((await authorities('jwt'))[0]?.authority_id);
  });

  it('serves the bundle over https_spiffe with the server SVID', async () => {
    const pem = ok(await cli(['bundle', 'show', ...admin(), '--format', 'pem']));
    const { body, peer } = await new Promise<{ body: string; peer: X509Certificate }>((resolve, reject) => {
      let peer: X509Certificate | undefined;
      const req = request(
        {
          host: '127.0.0.1',
          port: bundlePort,
          path: '/',
          ca: pem,
          // The SVID names no host; what must match is the server's SPIFFE ID (checked below).
          checkServerIdentity: () => undefined,
        },
        (res) => {
          let text = '';
          res.on('data', (c: Buffer) => {
            text += c.toString();
          });
          res.on('end', () =>
            peer ? resolve({ body: text, peer }) : reject(new Error('no peer certificate')),
          );
        },
      );
      req.on('socket', (socket) => {
        if (socket instanceof TLSSocket) {
          socket.once('secureConnect', () => {
            peer = socket.getPeerX509Certificate();
          });
        }
      });
      req.on('error', reject);
      req.end();
    });
    expect(peer.subjectAltName).toBe(`URI:${TD}/ironroot/server`);
    const bundle = SpiffeBundle.parse(TrustDomain.parse('example.org'), body);
    expect(bundle.refreshHintSeconds).toBe(120);
    expect(bundle.sequenceNumber).toBeGreaterThan(0n);
    expect(bundle.x509Authorities.map((c) => c.toString()).join('')).toBe(pem);
    expect(bundle.jwtAuthorities.size).toBe(1);
  });

  it('rotates by hand: the bundle holds old and new CA across the switch, and SVIDs verify throughout', async () => {
    const before = await authorities('x509');
    ok(await cli(['localauthority', 'x509', 'prepare', ...admin()]));
    const pem = ok(await cli(['bundle', 'show', ...admin(), '--format', 'pem']));
    expect(pem.match(/BEGIN CERTIFICATE/g)).toHaveLength(2);
    await mintAndVerify('before-switch');
    ok(await cli(['localauthority', 'x509', 'activate', ...admin()]));
    const after = await authorities('x509');
    expect(after.map((a) => a.state)).toEqual(['old', 'active']);
    expect(after[0]?.authority_id).toBe(before[0]?.authority_id);
    await mintAndVerify('after-switch');
    const refused = await cli([
      'localauthority',
      'x509',
      'revoke',
      ...admin(),
      '--authority-id',
      after[0]?.authority_id ?? '',
    ]);
    expect(refused.stderr).toBe(
      `Error (ERR_CA_AUTHORITY_NOT_TAINTED): key ${after[0]?.authority_id} is not tainted; taint it before revoking it\n`,
    );
  });

  it('resumes the same keys after a restart', async () => {
    const before = [...(await authorities('x509')), ...(await authorities('jwt'))];
    await server.stop();
    await server.restart();
    expect([...(await authorities('x509')), ...(await authorities('jwt'))]).toEqual(before);
    await mintAndVerify('after-restart');
  });

  it('stores, lists and deletes a federated bundle, refusing the own trust domain', async () => {
    const pemFile = join(server.dir, 'partner.pem');
    writeFileSync(pemFile, ok(await cli(['bundle', 'show', ...admin(), '--format', 'pem'])));
    expect(ok(await bundleSet('partner.org', pemFile, 'pem')).trim()).toBe(
      'Bundle for partner.org set (sequence 1).',
    );
    const listed = JSON.parse(ok(await cli(['bundle', 'list', ...admin(), '--output', 'json']))) as {
      bundles: { trust_domain: string }[];
    };
    expect(listed.bundles.map((b) => b.trust_domain)).toEqual(['partner.org']);
    const own = await bundleSet('example.org', pemFile, 'pem');
    expect(own.stderr).toBe(
      "Error (ERR_INVALID_ARGUMENT): example.org is this server's own trust domain; its bundle is managed by the CA\n",
    );
    ok(await cli(['bundle', 'delete', ...admin(), '--id', 'partner.org']));
    const gone = await cli(['bundle', 'delete', ...admin(), '--id', 'partner.org']);
    expect(gone.stderr).toBe(
      'Error (ERR_BUNDLE_NOT_FOUND): no federated bundle for trust domain "partner.org"; see "bundle list"\n',
    );
  });

  it('taints and revokes the replaced CA: it leaves the bundle and the token', async () => {
    const old = (await authorities('x509')).find((a) => a.state === 'old')?.authority_id ?? '';
    expect(old).not.toBe('');
    ok(await cli(['localauthority', 'x509', 'taint', ...admin(), '--authority-id', old]));
    ok(await cli(['localauthority', 'x509', 'revoke', ...admin(), '--authority-id', old]));
    expect((await authorities('x509')).map((a) => a.authority_id)).not.toContain(old);
    const pem = ok(await cli(['bundle', 'show', ...admin(), '--format', 'pem']));
    expect(pem.match(/BEGIN CERTIFICATE/g)).toHaveLength(1);
    const { stdout } = await hsm.tool('--list-objects', '--type', 'privkey');
    expect(stdout).not.toContain(old);
    await mintAndVerify('after-revoke');
  });

  it('bundle set refuses a certificate whose key does not decode with ERR_BUNDLE_BAD_CERTIFICATE', async () => {
    const k = p256();
    const now = Date.now();
    const ca = await mintX509Ca(
      {
        trustDomain: TrustDomain.parse('partner.org'),
        publicKey: k.publicKey,
        notBefore: new Date(now - 60_000),
        notAfter: new Date(now + 3_600_000),
      },
      k.signer,
    );
    const bad = withUndecodableKey(ca).toString('base64');
    const pemFile = join(server.dir, 'bad-key.pem');
    writeFileSync(pemFile, `-----BEGIN CERTIFICATE-----\n${bad}\n-----END CERTIFICATE-----\n`);
    const spiffeFile = join(server.dir, 'bad-key.json');
    writeFileSync(spiffeFile, JSON.stringify({ keys: [{ kty: 'EC', use: 'x509-svid', x5c: [bad] }] }));
    for (const [file, format] of [
      [pemFile, 'pem'],
      [spiffeFile, 'spiffe'],
    ] as const) {
      const result = await bundleSet('partner.org', file, format);
      expect(result.code).toBe(1);
      expect(result.stderr).toMatch(
        /^Error \(ERR_INVALID_ARGUMENT\): bundle for partner\.org is not valid \(ERR_BUNDLE_BAD_CERTIFICATE\): .*usable public key/,
      );
    }
  });

  it('bundle set refuses a root with a 1024-bit RSA key (made by openssl) with ERR_BUNDLE_WEAK_KEY', async () => {
    const pemFile = join(server.dir, 'weak-rsa.pem');
    await promisify(execFile)('openssl', [
      ...['req', '-x509', '-newkey', 'rsa:1024', '-nodes', '-keyout', '/dev/null'],
      ...['-subj', '/CN=partner weak root', '-days', '1', '-out', pemFile],
    ]);
    const result = await bundleSet('partner.org', pemFile, 'pem');
    expect(result.code).toBe(1);
    expect(result.stderr).toMatch(
      /^Error \(ERR_INVALID_ARGUMENT\): bundle for partner\.org is not valid \(ERR_BUNDLE_WEAK_KEY\): .*authority 0 \(CN=partner weak root\) has an RSA key of 1024 bits, fewer than the 2048 required/,
    );
  });

  it('jwt mint refuses more than 64 audiences with ERR_JWTSVID_TOO_MANY_AUDIENCES', async () => {
    const audiences = Array.from({ length: 65 }, (_, i) => ['--audience', `aud-${i}`]).flat();
    const result = await cli(['jwt', 'mint', ...admin(), '--spiffe-id', `${TD}/w`, ...audiences]);
    expect(result.code).toBe(1);
    expect(result.stderr).toBe(
      'Error (ERR_INVALID_ARGUMENT): ERR_JWTSVID_TOO_MANY_AUDIENCES: JWT-SVID has 65 audiences; at most 64 are allowed (JWT-SVID §3.2 recommends one)\n',
    );
  });

  it('refuses to mint for an ID outside the trust domain', async () => {
    const result = await cli([
      'jwt',
      'mint',
      ...admin(),
      '--spiffe-id',
      'spiffe://other.org/x',
      '--audience',
      'a',
    ]);
    expect(result.code).toBe(1);
    expect(result.stderr).toContain("is outside this server's trust domain");
  });
});
