import { type ChildProcess, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { UnixAttestor } from '../../src/agent/workloadattestor/unix.js';
import { SpiffeId } from '../../src/spiffe/index.js';
import type { X509BundlesResponseMessage, X509SVIDResponseMessage } from '../../src/workload-api/proto.js';
import { WorkloadApiServer } from '../../src/workload-api/server.js';
import { RawClient } from '../helpers/raw-client.js';
import { openTempDir, systemUser, TestCa, TestProvider } from '../helpers/workload-api.js';

// Streams given the same provider objects share one encoding of each response (see
// src/workload-api/encoded.ts). These tests hold streams of several identities open at once, from
// processes of different uids, and check that each only ever receives its own identity, and that
// every update reaches every stream.

const fixture = fileURLToPath(new URL('./fixtures/raw-watch.mjs', import.meta.url));
const proto = fileURLToPath(new URL('../../proto/workload.proto', import.meta.url));
const cwd = fileURLToPath(new URL('../../', import.meta.url));
const me = `unix:uid:${process.getuid?.() ?? -1}`;

interface WatchedSvid {
  spiffeId: string;
  leafSha256: string;
  keyMatchesLeaf: boolean;
}
interface WatchLine {
  code: number;
  details?: string;
  svids?: WatchedSvid[];
}

/** The raw-watch fixture run as `user`: its messages, one at a time. */
function watchAs(user: { uid: number; gid: number }, socketPath: string) {
  const child: ChildProcess = spawn(process.execPath, [fixture, socketPath, proto], {
    uid: user.uid,
    gid: user.gid,
    cwd,
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  if (child.stdout === null) throw new Error('fixture has no stdout pipe');
  const iterator = createInterface({ input: child.stdout })[Symbol.asyncIterator]();
  return {
    async next(): Promise<WatchLine> {
      const line = await iterator.next();
      if (line.done === true) throw new Error(`fixture as uid ${user.uid} closed stdout before a message`);
      return JSON.parse(line.value) as WatchLine;
    },
    stop(): void {
      child.stdin?.end();
    },
  };
}

const sha256 = (der: Uint8Array) => createHash('sha256').update(der).digest('hex');

describe('Workload API streams sharing encoded responses', () => {
  let dir: string;
  let provider: TestProvider;
  let server: WorkloadApiServer;
  let alice: { uid: number; gid: number };
  let bob: { uid: number; gid: number };
  const aliceId = SpiffeId.parse('spiffe://example.org/alice');
  const bobId = SpiffeId.parse('spiffe://example.org/bob');
  const rootId = SpiffeId.parse('spiffe://example.org/root');
  const foreign = TestCa.create('other.org');
  const stops: Array<() => void> = [];

  /** What `spiffeId` holds in the provider now, as the fixture reports an SVID. */
  const expected = (spiffeId: SpiffeId): WatchedSvid => {
    const svid = provider.svidOf(spiffeId);
    if (svid === undefined) throw new Error(`provider holds no SVID for ${spiffeId}`);
    return {
      spiffeId: spiffeId.toString(),
      leafSha256: sha256(svid.chainDer[0] ?? new Uint8Array()),
      keyMatchesLeaf: true,
    };
  };

  beforeAll(async () => {
    alice = await systemUser('ironroot-wapi-a');
    bob = await systemUser('ironroot-wapi-b');
    provider = new TestProvider(await TestCa.create('example.org'), new UnixAttestor());
    await provider.setEntries([
      { spiffeId: aliceId, selectors: [`unix:uid:${alice.uid}`] },
      { spiffeId: bobId, selectors: [`unix:uid:${bob.uid}`] },
      { spiffeId: rootId, selectors: [me] },
    ]);
    dir = openTempDir('wapi-shared-');
    server = await WorkloadApiServer.listen({ provider, socketPath: join(dir, 'agent.sock') });
  });

  afterEach(() => {
    for (const stop of stops.splice(0)) stop();
  });

  afterAll(async () => {
    await server.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('gives each of several concurrent identities only its own SVID and key, before and after a rotation', async () => {
    const watchers = [
      { id: aliceId, watch: watchAs(alice, server.socketPath) },
      { id: bobId, watch: watchAs(bob, server.socketPath) },
      // Two streams of one identity: they are given the same shared bytes.
      { id: aliceId, watch: watchAs(alice, server.socketPath) },
    ];
    for (const { watch } of watchers) stops.push(() => watch.stop());
    const client = new RawClient(server.socketPath);
    stops.push(() => client.close());
    const own = client.stream<X509SVIDResponseMessage>('FetchX509SVID');

    for (const { id, watch } of watchers)
      expect(await watch.next()).toEqual({ code: 0, svids: [expected(id)] });
    const [first] = await own.waitFor(1);
    expect(first?.svids.map((s) => [s.spiffe_id, sha256(s.x509_svid)])).toEqual([
      [rootId.toString(), expected(rootId).leafSha256],
    ]);

    const before = [aliceId, bobId, rootId].map((id) => expected(id).leafSha256);
    await provider.rotate();
    expect([aliceId, bobId, rootId].map((id) => expected(id).leafSha256)).not.toEqual(before);
    for (const { id, watch } of watchers)
      expect(await watch.next()).toEqual({ code: 0, svids: [expected(id)] });
    const [, second] = await own.waitFor(2);
    expect(second?.svids.map((s) => [s.spiffe_id, sha256(s.x509_svid)])).toEqual([
      [rootId.toString(), expected(rootId).leafSha256],
    ]);
    own.cancel();
  });

  it('sends a stream the new state when only a hint changes on an otherwise unchanged SVID', async () => {
    const client = new RawClient(server.socketPath);
    stops.push(() => client.close());
    const stream = client.stream<X509SVIDResponseMessage>('FetchX509SVID');
    const [first] = await stream.waitFor(1);
    await provider.setEntries([
      { spiffeId: aliceId, selectors: [`unix:uid:${alice.uid}`] },
      { spiffeId: bobId, selectors: [`unix:uid:${bob.uid}`] },
      { spiffeId: rootId, selectors: [me], hint: 'renamed' },
    ]);
    const [, second] = await stream.waitFor(2);
    stream.cancel();
    expect(first?.svids[0]?.hint).toBe('');
    expect(second?.svids[0]?.hint).toBe('renamed');
    // The same certificate and key: only the hint made it a new message.
    expect(second?.svids[0]?.x509_svid.equals(first?.svids[0]?.x509_svid ?? Buffer.alloc(0))).toBe(true);
  });

  it('brings a bundle update to every open FetchX509Bundles stream', async () => {
    const client = new RawClient(server.socketPath);
    stops.push(() => client.close());
    const streams = [1, 2, 3].map(() => client.stream<X509BundlesResponseMessage>('FetchX509Bundles'));
    for (const s of streams)
      expect(Object.keys((await s.waitFor(1))[0]?.bundles ?? {})).toEqual(['spiffe://example.org']);
    provider.setFederated([(await foreign).bundle()]);
    for (const s of streams) {
      const [, second] = await s.waitFor(2);
      s.cancel();
      expect(Object.keys(second?.bundles ?? {}).sort()).toEqual([
        'spiffe://example.org',
        'spiffe://other.org',
      ]);
    }
  });
});
