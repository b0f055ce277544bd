import { status } from '@grpc/grpc-js';
import { decodeJwt } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  healthy,
  startAttestServer,
  startTestAgent,
  TD,
  type TestAgent,
  type TestServer,
  until,
} from '../attestation/harness.js';
import { parseMetrics, sumOf } from '../helpers/metrics.js';
import { RawClient } from '../helpers/raw-client.js';
import { entry, workloadSocketPath, workloadWhere } from './harness.js';

/** This test process is the workload: its uid is its selector. */
const me = `unix:uid:${process.getuid?.() ?? 0}`;

interface JwtSvidResponse {
  svids: Array<{ spiffe_id: string; svid: string }>;
}

/** JWT-SVIDs the server has minted, from its Prometheus counter on /metrics. */
async function jwtsMinted(server: TestServer): Promise<number> {
  const metric = await server.server.health.inject({ method: 'GET', url: '/metrics' });
  return sumOf(parseMetrics(metric.body), 'ironroot_svids_issued_total', {
    kind: 'jwt',
    issued_to: 'workload',
  });
}

/**
 * docs/agent-config.md: JWT-SVIDs are minted by the server on demand and cached per
 * (SPIFFE ID, audience set) until half their life. The default JWT-SVID TTL (minutes) keeps every
 * call here well inside the half-life.
 */
describe('the agent’s JWT-SVID cache (real server and agent)', () => {
  let server: TestServer;
  let agent: TestAgent;
  let client: RawClient;
  const id = `spiffe://${TD}/workload/jwt-cache`;

  async function fetchJwt(audience: string[]): Promise<string> {
    const response = await client.unary<JwtSvidResponse>('FetchJWTSVID', { audience });
    expect(response.svids.map((s) => s.spiffe_id)).toEqual([id]);
    return response.svids[0]?.svid ?? '';
  }

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
    await server.server.datastore.createEntry(entry('/workload/jwt-cache', agentId, [me]), 'test');
    await workloadWhere(agent, 'the workload’s X.509-SVID in the cache', (w) => w.svids === 1);
    client = new RawClient(agent.config.socket_path ?? '');
  });

  afterAll(async () => {
    client?.close();
    await agent?.stop();
    await server?.stop();
  });

  it('serves the same token for the same ID and audience set with one server mint, in any audience order', async () => {
    const before = await jwtsMinted(server);
    const first = await fetchJwt(['svc-a', 'svc-b']);
    expect(await jwtsMinted(server)).toBe(before + 1);
    expect(decodeJwt(first)).toMatchObject({ sub: id, aud: ['svc-a', 'svc-b'] });

    expect(await fetchJwt(['svc-a', 'svc-b'])).toBe(first);
    // The cache key is the audience *set*: order and repeats do not make another one.
    expect(await fetchJwt(['svc-b', 'svc-a'])).toBe(first);
    expect(await fetchJwt(['svc-b', 'svc-a', 'svc-b'])).toBe(first);
    expect(await jwtsMinted(server)).toBe(before + 1);
  });

  it('mints a new token for a different audience set', async () => {
    const ab = await fetchJwt(['svc-a', 'svc-b']);
    const before = await jwtsMinted(server);

    const c = await fetchJwt(['svc-c']);
    expect(c).not.toBe(ab);
    expect(decodeJwt(c)).toMatchObject({ sub: id, aud: 'svc-c' });
    expect(await jwtsMinted(server)).toBe(before + 1);

    // A subset of a cached set is another set too.
    const a = await fetchJwt(['svc-a']);
    expect(a).not.toBe(ab);
    expect(await jwtsMinted(server)).toBe(before + 2);

    // And each is cached in its turn.
    expect(await fetchJwt(['svc-c'])).toBe(c);
    expect(await fetchJwt(['svc-a'])).toBe(a);
    expect(await jwtsMinted(server)).toBe(before + 2);
  });
});

/**
 * docs/agent-config.md: while the server cannot be reached, a cached JWT-SVID past its half-life
 * but not expired is served instead of a fresh one, as SPIRE does; an expired one never is.
 */
describe('the agent’s JWT-SVID cache while the server is down (real server and agent)', () => {
  let server: TestServer;
  let agent: TestAgent;
  let client: RawClient;
  const id = `spiffe://${TD}/workload/jwt-outage`;

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
    // A short JWT TTL, so the half-life (when the agent asks the server again) and the expiry
    // both pass within the test.
    await server.server.datastore.createEntry(
      entry('/workload/jwt-outage', agentId, [me], { jwtSvidTtl: 12 }),
      'test',
    );
    await workloadWhere(agent, 'the workload’s X.509-SVID in the cache', (w) => w.svids === 1);
    client = new RawClient(agent.config.socket_path ?? '');
  });

  afterAll(async () => {
    client?.close();
    await agent?.stop();
    await server?.stop();
  });

  const fetchJwt = () => client.unary<JwtSvidResponse>('FetchJWTSVID', { audience: ['svc-outage'] });
  const afterMs = (at: number) =>
    until(`the clock to pass ${at}`, () => Date.now() > at || undefined, 30_000);

  it('returns the cached token still valid when renewing it fails, and not once it has expired', async () => {
    const first = await fetchJwt();
    const mintedBy = Date.now();
    expect(first.svids.map((s) => s.spiffe_id)).toEqual([id]);
    const token = first.svids[0]?.svid ?? '';
    const expMs = (decodeJwt(token).exp ?? 0) * 1000;
    await server.down();

    // Past the half-life the agent asks the server for a new token; the server is down.
    await afterMs((mintedBy + expMs) / 2);
    expect(Date.now()).toBeLessThan(expMs);
    const during = await fetchJwt();
    expect(during.svids.map((s) => s.svid)).toEqual([token]);

    await afterMs(expMs);
    await expect(fetchJwt()).rejects.toMatchObject({ code: status.UNAVAILABLE });
  });
});
