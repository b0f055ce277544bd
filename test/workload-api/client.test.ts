import { rmSync } from 'node:fs';
import { join } from 'node:path';
import {
  loadPackageDefinition,
  Server,
  ServerCredentials,
  type ServerWritableStream,
  status,
} from '@grpc/grpc-js';
import { loadSync } from '@grpc/proto-loader';
import { afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { UnixAttestor } from '../../src/agent/workloadattestor/unix.js';
import { isSpiffeError, SpiffeId, TrustDomain } from '../../src/spiffe/index.js';
import { parseX509SvidResponse, WorkloadApiClient, type X509Context } from '../../src/workload-api/client.js';
import { isWorkloadApiError, type WorkloadApiError } from '../../src/workload-api/errors.js';
import { WORKLOAD_PROTO_PATH, type X509SVIDResponseMessage } from '../../src/workload-api/proto.js';
import { WorkloadApiServer } from '../../src/workload-api/server.js';
import { X509Source } from '../../src/workload-api/x509-source.js';
import { openTempDir, TestCa, TestProvider } from '../helpers/workload-api.js';

const me = `unix:uid:${process.getuid?.() ?? -1}`;
const web = SpiffeId.parse('spiffe://example.org/web');
const db = SpiffeId.parse('spiffe://example.org/db');

describe('WorkloadApiClient against the ironroot server', () => {
  let ca: TestCa;
  let foreign: TestCa;
  let dir: string;
  let provider: TestProvider;
  let server: WorkloadApiServer;
  let client: WorkloadApiClient;

  beforeAll(async () => {
    ca = await TestCa.create('example.org');
    foreign = await TestCa.create('other.org');
  });
  beforeEach(async () => {
    dir = openTempDir('wapi-client-');
    provider = new TestProvider(ca, new UnixAttestor());
    await provider.setEntries([
      { spiffeId: web, selectors: [me], hint: 'web' },
      { spiffeId: db, selectors: [me], hint: 'db' },
    ]);
    provider.setFederated([foreign.bundle()]);
    server = await WorkloadApiServer.listen({ provider, socketPath: join(dir, 'agent.sock') });
    client = new WorkloadApiClient({
      address: `unix://${server.socketPath}`,
      backoff: { initialMs: 10, maxMs: 50 },
    });
  });
  afterEach(async () => {
    client.close();
    await server.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('takes its address from SPIFFE_ENDPOINT_SOCKET and refuses to start without one', () => {
    const fromEnv = new WorkloadApiClient({ env: { SPIFFE_ENDPOINT_SOCKET: `unix://${server.socketPath}` } });
    expect(fromEnv.address).toBe(`unix://${server.socketPath}`);
    fromEnv.close();
    expect(() => new WorkloadApiClient({ env: {} })).toThrow(
      expect.objectContaining({ code: 'ERR_ENDPOINT_EMPTY' }) as Error,
    );
    let error: unknown;
    try {
      new WorkloadApiClient({ address: 'unix://name/agent.sock' });
    } catch (e) {
      error = e;
    }
    expect(isSpiffeError(error, 'ERR_ENDPOINT_UNIX_AUTHORITY')).toBe(true);
  });

  it('fetchX509Context parses the SVIDs in order, with hints and every bundle', async () => {
    const context = await client.fetchX509Context();
    expect(context.svids.map((s) => [s.svid.id.toString(), s.hint])).toEqual([
      [web.toString(), 'web'],
      [db.toString(), 'db'],
    ]);
    expect(
      context.svids[0]?.svid.certificates[0]?.raw.equals(
        Buffer.from(provider.svidOf(web)?.chainDer[0] ?? []),
      ),
    ).toBe(true);
    const tds = context.bundles.bundles().map((b) => b.trustDomain.name);
    expect(tds.sort()).toEqual(['example.org', 'other.org']);
  });

  it('fetchX509Bundles and fetchJwtBundles return bundles by trust domain', async () => {
    const x509 = await client.fetchX509Bundles();
    expect(x509.getX509BundleForTrustDomain(TrustDomain.parse('other.org'))?.authorities[0]?.raw).toEqual(
      foreign.certificate.raw,
    );
    const jwt = await client.fetchJwtBundles();
    expect([
      ...(jwt.getJwtBundleForTrustDomain(TrustDomain.parse('example.org'))?.authorities.keys() ?? []),
    ]).toEqual([ca.jwtKeyId]);
  });

  it('fetchJwtSvids and validateJwtSvid round-trip through the agent', async () => {
    const all = await client.fetchJwtSvids({ audience: ['reports'] });
    expect(all.map((s) => [s.svid.id.toString(), s.hint])).toEqual([
      [web.toString(), 'web'],
      [db.toString(), 'db'],
    ]);
    const [only] = await client.fetchJwtSvids({ audience: ['reports'], spiffeId: db });
    expect(only?.svid.id.toString()).toBe(db.toString());
    const validated = await client.validateJwtSvid(only?.svid.token ?? '', 'reports');
    expect(validated.spiffeId.toString()).toBe(db.toString());
    expect(validated.claims).toMatchObject({ sub: db.toString(), aud: 'reports' });
    await expect(client.validateJwtSvid(only?.svid.token ?? '', 'other')).rejects.toSatisfy((e: unknown) =>
      isWorkloadApiError(e, 'ERR_WORKLOADAPI_INVALID_ARGUMENT'),
    );
  });

  it("fetchJwtSvid returns the default identity's token, or the one asked for", async () => {
    expect((await client.fetchJwtSvid({ audience: ['a'] })).id.toString()).toBe(web.toString());
    expect((await client.fetchJwtSvid({ audience: ['a'], spiffeId: db })).id.toString()).toBe(db.toString());
  });

  it('x509Contexts yields the state and each change until the loop ends', async () => {
    const seen: string[] = [];
    for await (const context of client.x509Contexts(new AbortController().signal)) {
      seen.push(context.svids.map((s) => s.svid.id.path).join(','));
      if (seen.length === 1) await provider.setEntries([{ spiffeId: db, selectors: [me] }]);
      else break;
    }
    expect(seen).toEqual(['/web,/db', '/db']);
    // Leaving the loop ended the stream.
    await expect.poll(() => provider.subscribers).toBe(0);
  });

  it('reports PermissionDenied with a stable code and advice', async () => {
    await provider.setEntries([]);
    const error = await client.fetchX509Context().catch((e: unknown) => e);
    expect(isWorkloadApiError(error, 'ERR_WORKLOADAPI_PERMISSION_DENIED')).toBe(true);
    expect((error as WorkloadApiError).message).toContain('registration entries');
    expect((error as WorkloadApiError).grpcCode).toBe(status.PERMISSION_DENIED);
  });

  it('watchX509Context delivers rotations and reconnects after the server restarts', async () => {
    const abort = new AbortController();
    const updates: X509Context[] = [];
    const errors: WorkloadApiError[] = [];
    const watching = client.watchX509Context(
      { onUpdate: (c) => updates.push(c), onError: (e) => errors.push(e) },
      abort.signal,
    );
    await expect.poll(() => updates.length).toBe(1);
    await provider.rotate();
    await expect.poll(() => updates.length).toBe(2);
    expect(
      updates[1]?.svids[0]?.svid.certificates[0]?.raw.equals(
        updates[0]?.svids[0]?.svid.certificates[0]?.raw ?? Buffer.alloc(0),
      ),
    ).toBe(false);
    await server.close();
    server = await WorkloadApiServer.listen({ provider, socketPath: join(dir, 'agent.sock') });
    await expect.poll(() => updates.length).toBe(3);
    expect(errors.length).toBeGreaterThan(0);
    abort.abort();
    await watching;
  });

  it('X509Source resolves after the first update, follows rotation and drops the SVID on PermissionDenied', async () => {
    const source = await X509Source.create({ client });
    try {
      const first = source.getX509Svid();
      expect(first.id.toString()).toBe(web.toString());
      expect(source.getX509BundleForTrustDomain(TrustDomain.parse('example.org'))).toBeDefined();
      await provider.rotate();
      await expect
        .poll(() =>
          source.getX509Svid().certificates[0]?.raw.equals(first.certificates[0]?.raw ?? Buffer.alloc(0)),
        )
        .toBe(false);
      await provider.setEntries([]);
      await expect
        .poll(() => {
          try {
            source.getX509Svid();
            return 'still has an SVID';
          } catch (e) {
            return isWorkloadApiError(e, 'ERR_WORKLOADAPI_NO_SVID') ? 'dropped' : String(e);
          }
        })
        .toBe('dropped');
    } finally {
      source.close();
    }
  });

  it('X509Source picks an SVID by hint', async () => {
    const source = await X509Source.create({
      client,
      pick: (c) => c.svids.find((s) => s.hint === 'db')?.svid,
    });
    expect(source.getX509Svid().id.toString()).toBe(db.toString());
    source.close();
  });
});

describe('watchX509Context against a server that answers InvalidArgument', () => {
  it('stops and rethrows instead of retrying', async () => {
    const dir = openTempDir('wapi-invalid-');
    const grpcObject = loadPackageDefinition(loadSync(WORKLOAD_PROTO_PATH, { keepCase: true }));
    const service = grpcObject.SpiffeWorkloadAPI;
    if (typeof service !== 'function' || !('service' in service)) throw new Error('no service in proto');
    let calls = 0;
    const server = new Server();
    server.addService(service.service, {
      FetchX509SVID: (call: ServerWritableStream<object, object>) => {
        calls += 1;
        call.emit('error', { code: status.INVALID_ARGUMENT, details: 'bad request' });
      },
    });
    const socketPath = join(dir, 'agent.sock');
    await new Promise<void>((resolve, reject) =>
      server.bindAsync(`unix://${socketPath}`, ServerCredentials.createInsecure(), (e) =>
        e ? reject(e) : resolve(),
      ),
    );
    const client = new WorkloadApiClient({
      address: `unix://${socketPath}`,
      backoff: { initialMs: 1, maxMs: 1 },
    });
    try {
      await expect(
        client.watchX509Context({ onUpdate: () => {} }, new AbortController().signal),
      ).rejects.toSatisfy((e: unknown) => isWorkloadApiError(e, 'ERR_WORKLOADAPI_INVALID_ARGUMENT'));
      expect(calls).toBe(1);
    } finally {
      client.close();
      server.forceShutdown();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('parseX509SvidResponse', () => {
  let ca: TestCa;
  beforeAll(async () => {
    ca = await TestCa.create('example.org');
  });

  async function message(hints: string[]): Promise<X509SVIDResponseMessage> {
    const svids = await Promise.all(
      hints.map(async (hint, i) => {
        const s = await ca.svid(SpiffeId.parse(`spiffe://example.org/w${i}`));
        return {
          spiffe_id: s.spiffeId.toString(),
          x509_svid: Buffer.concat(s.chainDer.map((d) => Buffer.from(d))),
          x509_svid_key: Buffer.from(s.keyPkcs8Der),
          bundle: ca.certificate.raw,
          hint,
        };
      }),
    );
    return { svids, crl: [], federated_bundles: { 'other.org': ca.certificate.raw } };
  }

  it('keeps the first SVID of a repeated hint, never treats empty hints as repeats, accepts bare map keys', async () => {
    const context = parseX509SvidResponse(await message(['a', '', 'a', '']));
    expect(context.svids.map((s) => s.svid.id.path)).toEqual(['/w0', '/w1', '/w3']);
    expect(context.bundles.get(TrustDomain.parse('other.org'))).toBeDefined();
  });

  it('refuses a message without SVIDs or with a mandatory field empty', async () => {
    const empty = { svids: [], crl: [], federated_bundles: {} };
    expect(() => parseX509SvidResponse(empty)).toThrow(
      expect.objectContaining({ code: 'ERR_WORKLOADAPI_BAD_RESPONSE' }) as Error,
    );
    const m = await message(['']);
    const first = m.svids[0];
    if (first === undefined) throw new Error('no svid');
    first.bundle = Buffer.alloc(0);
    expect(() => parseX509SvidResponse(m)).toThrow(
      expect.objectContaining({ code: 'ERR_WORKLOADAPI_BAD_RESPONSE' }) as Error,
    );
  });
});
