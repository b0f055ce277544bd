import { execFileSync } from 'node:child_process';
import { createPrivateKey, X509Certificate } from 'node:crypto';
import { mkdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { status } from '@grpc/grpc-js';
import { afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { UnixAttestor } from '../../src/agent/workloadattestor/unix.js';
import {
  BundleSet,
  JwtBundle,
  SpiffeId,
  TrustDomain,
  validateJwtSvid,
  X509Svid,
} from '../../src/spiffe/index.js';
import { isWorkloadApiError } from '../../src/workload-api/errors.js';
import type { X509BundlesResponseMessage, X509SVIDResponseMessage } from '../../src/workload-api/proto.js';
import { WorkloadApiServer } from '../../src/workload-api/server.js';
import { RawClient } from '../helpers/raw-client.js';
import { openTempDir, TestCa, TestProvider } from '../helpers/workload-api.js';

interface JwtSvidResponse {
  svids: Array<{ spiffe_id: string; svid: string; hint: string }>;
}
interface ValidateResponse {
  spiffe_id: string;
  claims: { fields: Record<string, { kind: string; stringValue?: string; numberValue?: number }> };
}

const me = `unix:uid:${process.getuid?.() ?? -1}`;
const web = SpiffeId.parse('spiffe://example.org/web');
const db = SpiffeId.parse('spiffe://example.org/db');

describe('Workload API server driven by a standard grpc-js client', () => {
  let dir: string;
  let ca: TestCa;
  let foreign: TestCa;
  let provider: TestProvider;
  let server: WorkloadApiServer;
  let client: RawClient;

  beforeAll(async () => {
    ca = await TestCa.create('example.org');
    foreign = await TestCa.create('other.org');
  });

  beforeEach(async () => {
    dir = openTempDir('wapi-server-');
    provider = new TestProvider(ca, new UnixAttestor());
    await provider.setEntries([{ spiffeId: web, selectors: [me], hint: 'web' }]);
    server = await WorkloadApiServer.listen({ provider, socketPath: join(dir, 'run', 'agent.sock') });
    client = new RawClient(server.socketPath);
  });

  afterEach(async () => {
    client.close();
    await server.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('rejects a request without the security header with InvalidArgument', async () => {
    const stream = client.stream('FetchX509SVID', RawClient.header(false));
    const error = await stream.ended;
    expect(error.code).toBe(status.INVALID_ARGUMENT);
    expect(error.details).toBe('security header missing from request');
    await expect(
      client.unary('FetchJWTSVID', { audience: ['a'] }, RawClient.header(false)),
    ).rejects.toMatchObject({
      code: status.INVALID_ARGUMENT,
    });
  });

  it('rejects a header whose value is not exactly "true"', async () => {
    const md = RawClient.header(false);
    md.set('workload.spiffe.io', 'True');
    expect((await client.stream('FetchX509SVID', md).ended).code).toBe(status.INVALID_ARGUMENT);
  });

  it('FetchX509SVID sends the caller its SVID, key and bundle, with the kernel-reported caller', async () => {
    provider.setFederated([foreign.bundle()]);
    const stream = client.stream<X509SVIDResponseMessage>('FetchX509SVID');
    const [first] = await stream.waitFor(1);
    stream.cancel();
    expect(first?.svids).toHaveLength(1);
    const svid = first?.svids[0];
    expect(svid?.spiffe_id).toBe(web.toString());
    expect(svid?.hint).toBe('web');
    const parsed = X509Svid.parseDer(
      svid?.x509_svid ?? Buffer.alloc(0),
      svid?.x509_svid_key ?? Buffer.alloc(0),
    );
    expect(parsed.id.toString()).toBe(web.toString());
    expect(
      createPrivateKey({ key: svid?.x509_svid_key ?? Buffer.alloc(0), format: 'der', type: 'pkcs8' }).type,
    ).toBe('private');
    expect(new X509Certificate(svid?.bundle ?? Buffer.alloc(0)).raw.equals(ca.certificate.raw)).toBe(true);
    expect(Object.keys(first?.federated_bundles ?? {})).toEqual(['spiffe://other.org']);
    expect(provider.callers[0]).toEqual({
      pid: process.pid,
      uid: process.getuid?.(),
      gid: process.getgid?.(),
    });
  });

  it('FetchX509SVID sends the full state again after a rotation, on the open stream', async () => {
    const stream = client.stream<X509SVIDResponseMessage>('FetchX509SVID');
    await stream.waitFor(1);
    await provider.rotate();
    const [first, second] = await stream.waitFor(2);
    stream.cancel();
    expect(second?.svids).toHaveLength(1);
    expect(second?.svids[0]?.spiffe_id).toBe(web.toString());
    expect(second?.svids[0]?.x509_svid.equals(first?.svids[0]?.x509_svid ?? Buffer.alloc(0))).toBe(false);
    expect(second?.svids[0]?.bundle.length).toBeGreaterThan(0);
  });

  it('FetchX509SVID stays quiet on a notification that changes nothing, and sends the next real change', async () => {
    const stream = client.stream<X509SVIDResponseMessage>('FetchX509SVID');
    const [first] = await stream.waitFor(1);
    // No federated bundles before or after: every stream is told, none has anything new to send.
    provider.setFederated([]);
    provider.setFederated([]);
    await provider.rotate();
    const [, second] = await stream.waitFor(2);
    stream.cancel();
    // Had either empty change been sent, the second message would repeat the first SVID.
    expect(second?.svids[0]?.x509_svid.equals(first?.svids[0]?.x509_svid ?? Buffer.alloc(0))).toBe(false);
  });

  it('FetchX509SVID sends a new identity set when an entry is added', async () => {
    const stream = client.stream<X509SVIDResponseMessage>('FetchX509SVID');
    await stream.waitFor(1);
    await provider.setEntries([
      { spiffeId: web, selectors: [me], hint: 'web' },
      { spiffeId: db, selectors: [me], hint: 'db' },
    ]);
    const [, second] = await stream.waitFor(2);
    stream.cancel();
    expect(second?.svids.map((s) => s.spiffe_id)).toEqual([web.toString(), db.toString()]);
  });

  it('ends an open stream with PermissionDenied when the identities drop to none', async () => {
    const stream = client.stream<X509SVIDResponseMessage>('FetchX509SVID');
    await stream.waitFor(1);
    await provider.setEntries([]);
    const error = await stream.ended;
    expect(error.code).toBe(status.PERMISSION_DENIED);
    expect(stream.messages).toHaveLength(1);
  });

  it('answers PermissionDenied on every RPC to a caller with no identity', async () => {
    await provider.setEntries([{ spiffeId: web, selectors: ['unix:uid:4294967294'] }]);
    for (const rpc of ['FetchX509SVID', 'FetchX509Bundles', 'FetchJWTBundles'] as const) {
      expect((await client.stream(rpc).ended).code).toBe(status.PERMISSION_DENIED);
    }
    await expect(client.unary('FetchJWTSVID', { audience: ['a'] })).rejects.toMatchObject({
      code: status.PERMISSION_DENIED,
    });
  });

  it('FetchX509Bundles keys bundles by trust-domain SPIFFE ID and follows bundle updates', async () => {
    const stream = client.stream<X509BundlesResponseMessage>('FetchX509Bundles');
    const [first] = await stream.waitFor(1);
    expect(Object.keys(first?.bundles ?? {})).toEqual(['spiffe://example.org']);
    provider.setFederated([foreign.bundle()]);
    const [, second] = await stream.waitFor(2);
    stream.cancel();
    expect(Object.keys(second?.bundles ?? {}).sort()).toEqual(['spiffe://example.org', 'spiffe://other.org']);
    const otherDer = second?.bundles['spiffe://other.org'] ?? Buffer.alloc(0);
    expect(new X509Certificate(otherDer).raw.equals(foreign.certificate.raw)).toBe(true);
  });

  it('FetchJWTBundles holds JWK Sets with only the jwt-svid keys', async () => {
    const stream = client.stream<{ bundles: Record<string, Buffer> }>('FetchJWTBundles');
    const [first] = await stream.waitFor(1);
    stream.cancel();
    const jwks = JSON.parse(first?.bundles['spiffe://example.org']?.toString() ?? '{}') as {
      keys: Array<Record<string, unknown>>;
    };
    expect(jwks.keys).toHaveLength(1);
    expect(jwks.keys[0]?.kid).toBe(ca.jwtKeyId);
    expect(jwks.keys[0]?.x5c).toBeUndefined();
    const bundle = JwtBundle.parse(
      TrustDomain.parse('example.org'),
      first?.bundles['spiffe://example.org'] ?? '',
    );
    expect([...bundle.authorities.keys()]).toEqual([ca.jwtKeyId]);
  });

  it('FetchJWTSVID mints a token per identity that validates with the JWT bundle', async () => {
    const response = await client.unary<JwtSvidResponse>('FetchJWTSVID', { audience: ['reports'] });
    expect(response.svids.map((s) => [s.spiffe_id, s.hint])).toEqual([[web.toString(), 'web']]);
    const token = response.svids[0]?.svid ?? '';
    const svid = await validateJwtSvid(token, new BundleSet([ca.bundle()]), 'reports');
    expect(svid.id.toString()).toBe(web.toString());
  });

  it('FetchJWTSVID: empty audience is InvalidArgument; an ID the caller does not hold is PermissionDenied', async () => {
    await expect(client.unary('FetchJWTSVID', { audience: [] })).rejects.toMatchObject({
      code: status.INVALID_ARGUMENT,
    });
    await expect(client.unary('FetchJWTSVID', { audience: [''] })).rejects.toMatchObject({
      code: status.INVALID_ARGUMENT,
    });
    await expect(
      client.unary('FetchJWTSVID', { audience: ['a'], spiffe_id: db.toString() }),
    ).rejects.toMatchObject({
      code: status.PERMISSION_DENIED,
    });
    const only = await client.unary<JwtSvidResponse>('FetchJWTSVID', {
      audience: ['a'],
      spiffe_id: web.toString(),
    });
    expect(only.svids.map((s) => s.spiffe_id)).toEqual([web.toString()]);
  });

  it('ValidateJWTSVID returns the subject and the claims as a Struct', async () => {
    const { svids } = await client.unary<JwtSvidResponse>('FetchJWTSVID', { audience: ['reports'] });
    const token = svids[0]?.svid ?? '';
    const response = await client.unary<ValidateResponse>('ValidateJWTSVID', {
      audience: 'reports',
      svid: token,
    });
    expect(response.spiffe_id).toBe(web.toString());
    expect(response.claims.fields.sub?.stringValue).toBe(web.toString());
    expect(response.claims.fields.exp?.kind).toBe('numberValue');
    expect(response.claims.fields.exp?.numberValue).toBeGreaterThan(Date.now() / 1000);
    // A single audience is minted as a string claim.
    expect(response.claims.fields.aud).toEqual({ kind: 'stringValue', stringValue: 'reports' });
  });

  it('ValidateJWTSVID: empty audience or svid, wrong audience, bad token are InvalidArgument', async () => {
    const { svids } = await client.unary<JwtSvidResponse>('FetchJWTSVID', { audience: ['reports'] });
    const token = svids[0]?.svid ?? '';
    for (const request of [
      { audience: '', svid: token },
      { audience: 'reports', svid: '' },
      { audience: 'elsewhere', svid: token },
      { audience: 'reports', svid: 'not.a.token' },
    ]) {
      await expect(client.unary('ValidateJWTSVID', request)).rejects.toMatchObject({
        code: status.INVALID_ARGUMENT,
      });
    }
  });

  it('FetchJWTSVID and ValidateJWTSVID refuse more than 64 audiences with ERR_JWTSVID_TOO_MANY_AUDIENCES', async () => {
    const audience = Array.from({ length: 65 }, (_, i) => `aud-${i}`);
    await expect(client.unary('FetchJWTSVID', { audience })).rejects.toMatchObject({
      code: status.INVALID_ARGUMENT,
      details: expect.stringMatching(/^ERR_JWTSVID_TOO_MANY_AUDIENCES: .*65 audiences; at most 64/),
    });
    // A token the minting paths would never make, correctly signed by the trust domain's JWT key.
    const b64 = (v: unknown) => Buffer.from(JSON.stringify(v)).toString('base64url');
    const input = `${b64({ alg: ca.jwtSigner.algorithm, kid: ca.jwtKeyId, typ: 'JWT' })}.${b64({
      sub: web.toString(),
      aud: audience,
      exp: Math.floor(Date.now() / 1000) + 300,
    })}`;
    const signature = Buffer.from(await ca.jwtSigner.sign(Buffer.from(input))).toString('base64url');
    await expect(
      client.unary('ValidateJWTSVID', { audience: 'aud-0', svid: `${input}.${signature}` }),
    ).rejects.toMatchObject({
      code: status.INVALID_ARGUMENT,
      details: expect.stringMatching(/^ERR_JWTSVID_TOO_MANY_AUDIENCES: /),
    });
    const ok = await client.unary<JwtSvidResponse>('FetchJWTSVID', { audience: audience.slice(0, 64) });
    expect(ok.svids).toHaveLength(1);
  });

  it('answers Unimplemented for the WIT-SVID RPCs, InvalidArgument without the header', async () => {
    expect((await client.stream('FetchWITSVID').ended).code).toBe(status.UNIMPLEMENTED);
    expect((await client.stream('FetchWITBundles').ended).code).toBe(status.UNIMPLEMENTED);
    expect((await client.stream('FetchWITSVID', RawClient.header(false)).ended).code).toBe(
      status.INVALID_ARGUMENT,
    );
  });

  it('keeps hints unique and at most 1024 bytes', async () => {
    const long = SpiffeId.parse('spiffe://example.org/long');
    await provider.setEntries([
      { spiffeId: web, selectors: [me], hint: 'same' },
      { spiffeId: db, selectors: [me], hint: 'same' },
      { spiffeId: long, selectors: [me], hint: 'x'.repeat(1025) },
    ]);
    const stream = client.stream<X509SVIDResponseMessage>('FetchX509SVID');
    const [first] = await stream.waitFor(1);
    stream.cancel();
    expect(first?.svids.map((s) => s.hint)).toEqual(['same', '', '']);
    const jwt = await client.unary<JwtSvidResponse>('FetchJWTSVID', { audience: ['a'] });
    expect(jwt.svids.map((s) => s.hint)).toEqual(['same', '', '']);
  });

  it('unsubscribes a stream from the provider when the client cancels it', async () => {
    const stream = client.stream<X509SVIDResponseMessage>('FetchX509SVID');
    await stream.waitFor(1);
    expect(provider.subscribers).toBe(1);
    stream.cancel();
    await stream.ended;
    await expect.poll(() => provider.subscribers).toBe(0);
  });
});

describe('Workload API call observer (onCall)', () => {
  let dir: string;
  let provider: TestProvider;
  let server: WorkloadApiServer;
  let client: RawClient;
  let calls: Array<{ rpc: string; status: string }>;

  beforeEach(async () => {
    dir = openTempDir('wapi-observer-');
    calls = [];
    provider = new TestProvider(await TestCa.create('example.org'), new UnixAttestor());
    await provider.setEntries([{ spiffeId: web, selectors: [me] }]);
    server = await WorkloadApiServer.listen({
      provider,
      socketPath: join(dir, 'run', 'agent.sock'),
      onCall: (call) => calls.push({ ...call }),
    });
    client = new RawClient(server.socketPath);
  });

  afterEach(async () => {
    client.close();
    await server.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('hears a served stream once, as OK, however many messages it sends and however it ends', async () => {
    const stream = client.stream<X509SVIDResponseMessage>('FetchX509SVID');
    await stream.waitFor(1);
    await provider.rotate();
    await stream.waitFor(2);
    await provider.setEntries([]);
    expect((await stream.ended).code).toBe(status.PERMISSION_DENIED);
    expect(calls).toEqual([{ rpc: 'FetchX509SVID', status: 'OK' }]);
  });

  it('hears refusals by their gRPC status name', async () => {
    expect((await client.stream('FetchX509Bundles', RawClient.header(false)).ended).code).toBe(
      status.INVALID_ARGUMENT,
    );
    await expect(client.unary('FetchJWTSVID', { audience: [] })).rejects.toMatchObject({
      code: status.INVALID_ARGUMENT,
    });
    expect((await client.stream('FetchWITSVID').ended).code).toBe(status.UNIMPLEMENTED);
    await provider.setEntries([{ spiffeId: web, selectors: ['unix:uid:4294967294'] }]);
    expect((await client.stream('FetchX509SVID').ended).code).toBe(status.PERMISSION_DENIED);
    expect(calls).toEqual([
      { rpc: 'FetchX509Bundles', status: 'INVALID_ARGUMENT' },
      { rpc: 'FetchJWTSVID', status: 'INVALID_ARGUMENT' },
      { rpc: 'FetchWITSVID', status: 'UNIMPLEMENTED' },
      { rpc: 'FetchX509SVID', status: 'PERMISSION_DENIED' },
    ]);
  });

  it('hears unary calls answered OK', async () => {
    const jwt = await client.unary<JwtSvidResponse>('FetchJWTSVID', { audience: ['a'] });
    await client.unary('ValidateJWTSVID', { audience: 'a', svid: jwt.svids[0]?.svid ?? '' });
    expect(calls).toEqual([
      { rpc: 'FetchJWTSVID', status: 'OK' },
      { rpc: 'ValidateJWTSVID', status: 'OK' },
    ]);
  });

  it('answers the caller even when the observer throws', async () => {
    await server.close();
    server = await WorkloadApiServer.listen({
      provider,
      socketPath: join(dir, 'run', 'agent.sock'),
      onCall: () => {
        throw new Error('observer broken');
      },
    });
    client.close();
    client = new RawClient(server.socketPath);
    const jwt = await client.unary<JwtSvidResponse>('FetchJWTSVID', { audience: ['a'] });
    expect(jwt.svids).toHaveLength(1);
    const stream = client.stream<X509SVIDResponseMessage>('FetchX509SVID');
    expect((await stream.waitFor(1))[0]?.svids).toHaveLength(1);
    stream.cancel();
  });
});

describe('Workload API socket', () => {
  let dir: string;
  let provider: TestProvider;
  beforeAll(async () => {
    provider = new TestProvider(await TestCa.create('example.org'), new UnixAttestor());
  });
  beforeEach(() => {
    dir = openTempDir('wapi-socket-');
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('creates the parent directory 0755 and the socket 0777', async () => {
    const socketPath = join(dir, 'a', 'b', 'agent.sock');
    const server = await WorkloadApiServer.listen({ provider, socketPath });
    try {
      expect(statSync(join(dir, 'a', 'b')).mode & 0o777).toBe(0o755);
      expect(statSync(socketPath).isSocket()).toBe(true);
      expect(statSync(socketPath).mode & 0o777).toBe(0o777);
    } finally {
      await server.close();
    }
  });

  it('refuses a path that exists and is not a socket', async () => {
    const socketPath = join(dir, 'agent.sock');
    writeFileSync(socketPath, 'not a socket');
    await expect(WorkloadApiServer.listen({ provider, socketPath })).rejects.toSatisfy((e: unknown) =>
      isWorkloadApiError(e, 'ERR_WORKLOADAPI_SOCKET_NOT_SOCKET'),
    );
    mkdirSync(join(dir, 'adir'));
    await expect(WorkloadApiServer.listen({ provider, socketPath: join(dir, 'adir') })).rejects.toSatisfy(
      (e: unknown) => isWorkloadApiError(e, 'ERR_WORKLOADAPI_SOCKET_NOT_SOCKET'),
    );
  });

  it('replaces a stale socket but refuses one another server answers on', async () => {
    const socketPath = join(dir, 'agent.sock');
    const other = createServer();
    await new Promise<void>((resolve) => other.listen(socketPath, resolve));
    await expect(WorkloadApiServer.listen({ provider, socketPath })).rejects.toSatisfy((e: unknown) =>
      isWorkloadApiError(e, 'ERR_WORKLOADAPI_SOCKET_IN_USE'),
    );
    await new Promise<void>((resolve) => other.close(() => resolve()));
    // A process that bound the socket and died leaves the file behind with nobody listening.
    execFileSync('python3', [
      '-c',
      'import socket,sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])',
      socketPath,
    ]);
    expect(statSync(socketPath).isSocket()).toBe(true);
    const server = await WorkloadApiServer.listen({ provider, socketPath });
    await server.close();
  });
});
