import { X509Certificate } from 'node:crypto';
import { status } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { X509SVIDResponseMessage } from '../../src/workload-api/proto.js';
import {
  healthy,
  startAttestServer,
  startTestAgent,
  TD,
  type TestAgent,
  type TestServer,
  until,
} from '../attestation/harness.js';
import { type OpenStream, RawClient } from '../helpers/raw-client.js';
import { entry, workloadSocketPath, workloadWhere } from './harness.js';

/** This test process is the workload: its uid is its selector. */
const me = `unix:uid:${process.getuid?.() ?? 0}`;

function ids(message: X509SVIDResponseMessage | undefined): string[] {
  return (message?.svids ?? []).map((s) => s.spiffe_id);
}

/** The first message after the `after`th that satisfies `check`. */
function messageWhere(
  stream: OpenStream<X509SVIDResponseMessage>,
  what: string,
  after: number,
  check: (m: X509SVIDResponseMessage) => boolean,
): Promise<X509SVIDResponseMessage> {
  return until(what, () => stream.messages.slice(after).find(check), 60_000);
}

describe('SVID rotation and entry changes on an open FetchX509SVID stream', () => {
  let server: TestServer;
  let agent: TestAgent;
  let agentId: string;
  let client: RawClient;

  beforeAll(async () => {
    server = await startAttestServer();
    const token = await server.registration.createJoinToken({ ttl: 600, spiffe_id: '' }, 'test');
    agent = await startTestAgent(server, {
      attestation: 'join_token',
      join_token: token.value,
      socket_path: workloadSocketPath(),
      sync_interval: '200ms',
    });
    agentId = (await until('the agent to attest', () => healthy(agent))).spiffe_id;
    client = new RawClient(agent.config.socket_path ?? '');
  });

  afterAll(async () => {
    client?.close();
    await agent?.stop();
    await server?.stop();
  });

  it('rotates an SVID before it expires, then drops a deleted entry’s identity and adds a new one', async () => {
    const ds = server.server.datastore;
    const web = await ds.createEntry(entry('/web', agentId, [me], { x509SvidTtl: 12 }), 'test');
    const db = await ds.createEntry(entry('/db', agentId, [me], { x509SvidTtl: 3600 }), 'test');
    await workloadWhere(agent, 'both SVIDs', (w) => w.svids === 2);
    const stream = client.stream<X509SVIDResponseMessage>('FetchX509SVID');
    try {
      const [first] = await stream.waitFor(1);
      const firstWeb = first?.svids.find((s) => s.spiffe_id === web.spiffeId);
      expect(ids(first).sort()).toEqual([db.spiffeId, web.spiffeId].sort());

      // Rotation at about half of 12 s: a new certificate (and key) for /web, still before expiry.
      const rotated = await messageWhere(stream, 'a rotated /web SVID', 1, (m) => {
        const svid = m.svids.find((s) => s.spiffe_id === web.spiffeId);
        return svid !== undefined && !svid.x509_svid.equals(firstWeb?.x509_svid ?? Buffer.alloc(0));
      });
      const oldLeaf = new X509Certificate(firstWeb?.x509_svid ?? Buffer.alloc(0));
      const newSvid = rotated.svids.find((s) => s.spiffe_id === web.spiffeId);
      const newLeaf = new X509Certificate(newSvid?.x509_svid ?? Buffer.alloc(0));
      expect(newLeaf.serialNumber).not.toBe(oldLeaf.serialNumber);
      expect(newLeaf.publicKey.equals(oldLeaf.publicKey)).toBe(false);
      expect(new Date(newLeaf.validFrom).getTime()).toBeLessThan(new Date(oldLeaf.validTo).getTime());

      let seen = stream.messages.length;
      await ds.deleteEntry(web.id, 'test');
      const removed = await messageWhere(
        stream,
        '/web to disappear',
        seen,
        (m) => !ids(m).includes(web.spiffeId),
      );
      expect(ids(removed)).toEqual([db.spiffeId]);

      seen = stream.messages.length;
      const api = await ds.createEntry(entry('/api', agentId, [me]), 'test');
      const added = await messageWhere(stream, '/api to appear', seen, (m) => ids(m).includes(api.spiffeId));
      expect(ids(added).sort()).toEqual([api.spiffeId, db.spiffeId].sort());
      await ds.deleteEntry(api.id, 'test');
      await ds.deleteEntry(db.id, 'test');
      await workloadWhere(agent, 'the cache to empty', (w) => w.entries === 0 && w.svids === 0);
    } finally {
      stream.cancel();
    }
  });

  it('re-issues SVIDs signed by the new CA when the server’s X.509 CA rotates', async () => {
    const ds = server.server.datastore;
    const svc = await ds.createEntry(entry('/svc', agentId, [me], { x509SvidTtl: 3600 }), 'test');
    await workloadWhere(agent, 'the /svc SVID', (w) => w.svids === 1);
    const stream = client.stream<X509SVIDResponseMessage>('FetchX509SVID');
    try {
      const [first] = await stream.waitFor(1);
      const oldLeaf = new X509Certificate(first?.svids[0]?.x509_svid ?? Buffer.alloc(0));
      const seen = stream.messages.length;
      await server.server.ca.prepare('x509', 'test');
      const activated = await server.server.ca.activate('x509', 'test');
      const newCa = new X509Certificate(activated.certificateDer ?? new Uint8Array());
      expect(oldLeaf.verify(newCa.publicKey)).toBe(false);
      const reissued = await messageWhere(stream, 'an SVID signed by the new CA', seen, (m) =>
        new X509Certificate(m.svids[0]?.x509_svid ?? Buffer.alloc(0)).verify(newCa.publicKey),
      );
      expect(ids(reissued)).toEqual([svc.spiffeId]);
      // The bundle sent with it holds the new CA (and still the old one, for SVIDs not yet renewed).
      expect(reissued.svids[0]?.bundle.includes(newCa.raw)).toBe(true);
    } finally {
      stream.cancel();
      await ds.deleteEntry(svc.id, 'test');
      await workloadWhere(agent, 'the cache to empty', (w) => w.entries === 0 && w.svids === 0);
    }
  });

  it('keeps serving cached SVIDs while the server is down until they expire, and recovers when it returns', async () => {
    const ds = server.server.datastore;
    const cache = await ds.createEntry(entry('/cache', agentId, [me], { x509SvidTtl: 8 }), 'test');
    await workloadWhere(agent, 'the /cache SVID', (w) => w.svids === 1);
    await server.down();
    const syncsBefore = agent.agent.status().workload?.syncs ?? 0;

    const stream = client.stream<X509SVIDResponseMessage>('FetchX509SVID');
    const [served] = await stream.waitFor(1);
    expect(ids(served)).toEqual([`spiffe://${TD}/cache`]);
    // The server is really gone: syncs fail, and still the identity is served.
    await until('the outage to be logged', () =>
      agent.logs.lines.find((l) => String(l.msg).startsWith('the server is unreachable')),
    );
    expect(agent.agent.status().workload?.syncs).toBe(syncsBefore);

    // Past expiry with no server to renew it, the identity is withdrawn.
    const ended = await stream.ended;
    expect(ended.code).toBe(status.PERMISSION_DENIED);
    const leaf = new X509Certificate(served?.svids[0]?.x509_svid ?? Buffer.alloc(0));
    expect(new Date(leaf.validTo).getTime()).toBeLessThanOrEqual(Date.now());

    // The server returns (same datastore and HSM keys): the agent syncs again and issues a fresh SVID.
    await server.up();
    try {
      const [recovered] = await until('the identity to return', async () => {
        const attempt = client.stream<X509SVIDResponseMessage>('FetchX509SVID');
        const result = await Promise.race([attempt.waitFor(1), attempt.ended.then(() => undefined)]);
        attempt.cancel();
        return result;
      });
      expect(ids(recovered)).toEqual([`spiffe://${TD}/cache`]);
      const fresh = new X509Certificate(recovered?.svids[0]?.x509_svid ?? Buffer.alloc(0));
      expect(fresh.serialNumber).not.toBe(leaf.serialNumber);
      expect(new Date(fresh.validTo).getTime()).toBeGreaterThan(Date.now());
      expect((agent.agent.status().workload?.syncs ?? 0) > syncsBefore).toBe(true);
    } finally {
      await server.server.datastore.deleteEntry(cache.id, 'test');
    }
  });
});

describe('sync rounds at SVID rotations', () => {
  let server: TestServer;
  let agent: TestAgent;
  /** Entries whose SVIDs rotate, each at its own jittered moment. */
  const ENTRIES = 8;

  beforeAll(async () => {
    server = await startAttestServer();
    const token = await server.registration.createJoinToken({ ttl: 600, spiffe_id: '' }, 'test');
    agent = await startTestAgent(server, {
      attestation: 'join_token',
      join_token: token.value,
      socket_path: workloadSocketPath(),
      sync_interval: '200ms',
    });
    const agentId = (await until('the agent to attest', () => healthy(agent))).spiffe_id;
    for (let i = 0; i < ENTRIES; i++)
      await server.server.datastore.createEntry(
        entry(`/rotating/${i}`, agentId, [me], { x509SvidTtl: 4 }),
        'test',
      );
    await workloadWhere(agent, 'the /rotating SVIDs', (w) => w.svids === ENTRIES);
  });

  afterAll(async () => {
    await agent?.stop();
    await server?.stop();
  });

  it('runs a round only when a rotation is due, not round after round until the next whole second', async () => {
    // An interval far longer than the test: every round after the first is one a rotation asked for.
    agent.config.sync_interval = '1h';
    await agent.stop();
    const from = agent.logs.lines.length;
    await agent.start();
    // The first round issues every SVID; then each rotates twice, at about half of 4 s.
    const workload = await workloadWhere(
      agent,
      'two rotations of every SVID',
      (w) => w.svids_issued >= ENTRIES * 3,
    );
    const issuingRounds = agent.logs.lines
      .slice(from)
      .filter((l) => l.msg === 'workload X.509-SVIDs issued').length;
    expect(issuingRounds).toBeGreaterThanOrEqual(3);
    // Every round issued SVIDs; one more may be under way, its issuance not logged yet.
    expect(workload.syncs).toBeLessThanOrEqual(issuingRounds + 1);
  });
});
