import { execFileSync } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { decodeJwt } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AdminClient } from '../../src/server/admin/client.js';
import { createCsr, createKeySigner, SpiffeId } from '../../src/spiffe/index.js';
import { newKeyPair } from '../../src/spiffe/new-key-pair.js';
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
import { parseMetrics, type Sample, samplesOf, sumOf } from '../helpers/metrics.js';
import { RawClient } from '../helpers/raw-client.js';
import { entry, workloadSocketPath, workloadWhere } from '../workload/harness.js';

/** This test process is the workload: its uid is its selector. */
const me = `unix:uid:${process.getuid?.() ?? 0}`;
const WORKLOAD_ID = `spiffe://${TD}/workload/observed`;
const ADMIN_ID = `spiffe://${TD}/minted/by-admin`;
const ISO = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/;

/**
 * docs/operations.md: the server's metrics on the health listener, and its debug line per issued
 * SVID, against a real server (CA keys in SoftHSM) and a real agent serving a real workload.
 */
describe('server metrics and issuance logs (real server, SoftHSM, agent, workload)', () => {
  let server: TestServer;
  let agent: TestAgent;
  let admin: AdminClient;
  let client: RawClient;
  let agentId = '';
  let before: Sample[];
  let after: Sample[];
  let joinToken = '';
  let jwt = '';
  let workloadLeaf: X509Certificate;
  let workloadKey: Buffer;
  let adminJwt = '';

  async function scrape(): Promise<Sample[]> {
    const response = await server.server.health.inject({ method: 'GET', url: '/metrics' });
    expect(response.statusCode).toBe(200);
    return parseMetrics(response.body);
  }

  beforeAll(async () => {
    server = await startAttestServer();
    before = await scrape();
    joinToken = (await server.registration.createJoinToken({ ttl: 600, spiffe_id: '' }, 'test')).value;
    agent = await startTestAgent(server, {
      attestation: 'join_token',
      join_token: joinToken,
      socket_path: workloadSocketPath(),
      sync_interval: '200ms',
    });
    agentId = (await until('the agent to attest', () => healthy(agent))).spiffe_id;
    await server.server.datastore.createEntry(entry('/workload/observed', agentId, [me]), 'test');
    await workloadWhere(agent, 'the workload’s X.509-SVID in the cache', (w) => w.svids === 1);
    client = new RawClient(agent.config.socket_path ?? '');
    const stream = client.stream<X509SVIDResponseMessage>('FetchX509SVID');
    const [first] = await stream.waitFor(1);
    stream.cancel();
    const svid = first?.svids.find((s) => s.spiffe_id === WORKLOAD_ID);
    workloadLeaf = new X509Certificate(svid?.x509_svid ?? Buffer.alloc(0));
    workloadKey = svid?.x509_svid_key ?? Buffer.alloc(0);
    const answer = await client.unary<{ svids: { spiffe_id: string; svid: string }[] }>('FetchJWTSVID', {
      audience: ['observer'],
    });
    jwt = answer.svids[0]?.svid ?? '';

    admin = new AdminClient(server.adminSocket);
    const { privateKey } = newKeyPair('ec', { namedCurve: 'P-256' });
    await admin.call('SvidService', 'MintX509Svid', {
      csr: await createCsr({ spiffeId: SpiffeId.parse(ADMIN_ID) }, createKeySigner(privateKey)),
    });
    adminJwt = (await admin.call('SvidService', 'MintJwtSvid', { spiffe_id: ADMIN_ID, audience: ['ops'] }))
      .token;
    after = await scrape();
  });

  afterAll(async () => {
    admin?.close();
    client?.close();
    await agent?.stop();
    await server?.stop();
  });

  it('counts SVIDs by kind and whom they were issued to', () => {
    const issued = (kind: string, to: string) =>
      sumOf(after, 'ironroot_svids_issued_total', { kind, issued_to: to }) -
      sumOf(before, 'ironroot_svids_issued_total', { kind, issued_to: to });
    expect(issued('x509', 'agent')).toBe(1);
    expect(issued('x509', 'workload')).toBeGreaterThanOrEqual(1);
    expect(issued('jwt', 'workload')).toBe(1);
    expect(issued('x509', 'admin')).toBe(1);
    expect(issued('jwt', 'admin')).toBe(1);
  });

  it('times every HSM signature: at least one per SVID issued, and none failed', () => {
    const signs = (samples: Sample[]) =>
      sumOf(samples, 'ironroot_hsm_sign_duration_seconds_count', { key_manager: 'pkcs11' });
    const svids = (samples: Sample[]) => sumOf(samples, 'ironroot_svids_issued_total');
    expect(signs(after) - signs(before)).toBeGreaterThan(0);
    expect(signs(after) - signs(before)).toBeGreaterThanOrEqual(svids(after) - svids(before));
    // The histogram's +Inf bucket holds every observation.
    expect(sumOf(after, 'ironroot_hsm_sign_duration_seconds_bucket', { le: '+Inf' })).toBe(signs(after));
    expect(sumOf(after, 'ironroot_hsm_sign_errors_total')).toBe(0);
  });

  it('times the join-token attestation and the agent’s sync calls', () => {
    expect(
      sumOf(after, 'ironroot_node_attestation_duration_seconds_count', {
        method: 'join_token',
        operation: 'attest',
        result: 'ok',
      }),
    ).toBe(1);
    for (const rpc of ['FetchEntries', 'BatchNewX509SVID', 'NewJWTSVID', 'FetchBundles'])
      expect(
        sumOf(after, 'ironroot_agent_api_sync_duration_seconds_count', { rpc, result: 'ok' }),
        rpc,
      ).toBeGreaterThan(0);
  });

  it('publishes the active CA’s notAfter, equal to the CA certificate’s as openssl reads it', async () => {
    const enddate = execFileSync('openssl', ['x509', '-noout', '-enddate', '-in', server.bundleFile])
      .toString()
      .trim()
      .replace(/^notAfter=/, '');
    const x509 = samplesOf(after, 'ironroot_ca_not_after_seconds', { kind: 'x509' });
    expect(x509).toHaveLength(1);
    expect(x509[0]?.labels).toEqual({ kind: 'x509', slot: 'A', state: 'active' });
    expect(x509[0]?.value).toBe(Date.parse(enddate) / 1000);

    const jwtAuthorities = await admin.call('LocalAuthorityService', 'ListAuthorities', { kind: 'jwt' });
    const activeJwt = jwtAuthorities.authorities.find((a) => a.state === 'active');
    expect(samplesOf(after, 'ironroot_ca_not_after_seconds', { kind: 'jwt' })).toEqual([
      {
        name: 'ironroot_ca_not_after_seconds',
        labels: { kind: 'jwt', slot: 'A', state: 'active' },
        value: activeJwt?.not_after,
      },
    ]);
  });

  it('logs the agent SVID at debug with its SPIFFE ID, serial and expiry', async () => {
    const node = await server.server.datastore.getNode(agentId);
    const lines = server.logs.lines.filter((l) => l.msg === 'agent X.509-SVID issued');
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatchObject({
      level: 'debug',
      issued_to: 'agent',
      spiffe_id: agentId,
      serial: node?.serialNumber,
      expires_at: new Date((node?.expiresAt ?? 0) * 1000).toISOString(),
    });
    expect(lines[0]?.time).toMatch(ISO);
  });

  it('logs the workload X.509-SVID with the serial and expiry of the certificate the workload got', () => {
    const line = server.logs.lines.find(
      (l) => l.msg === 'workload X.509-SVID issued' && l.serial === workloadLeaf.serialNumber,
    );
    expect(line).toMatchObject({
      level: 'debug',
      spiffe_id: WORKLOAD_ID,
      agent_id: agentId,
      expires_at: new Date(workloadLeaf.validTo).toISOString(),
    });
  });

  it('logs JWT-SVIDs with SPIFFE ID, audience and expiry, never the token or a key', () => {
    const workloadLine = server.logs.lines.find((l) => l.msg === 'workload JWT-SVID issued');
    expect(workloadLine).toMatchObject({
      level: 'debug',
      spiffe_id: WORKLOAD_ID,
      audience: ['observer'],
      expires_at: new Date((decodeJwt(jwt).exp ?? 0) * 1000).toISOString(),
    });
    const adminLine = server.logs.lines.find((l) => l.msg === 'admin JWT-SVID issued');
    expect(adminLine).toMatchObject({
      spiffe_id: ADMIN_ID,
      audience: ['ops'],
      expires_at: new Date((decodeJwt(adminJwt).exp ?? 0) * 1000).toISOString(),
    });
    expect(server.logs.lines.find((l) => l.msg === 'admin X.509-SVID issued')).toMatchObject({
      spiffe_id: ADMIN_ID,
    });
    const text = server.logs.text();
    expect(jwt.length).toBeGreaterThan(0);
    // Neither a token nor its signature, nor the workload's key, nor the join token.
    for (const secret of [jwt, jwt.split('.')[2] ?? jwt, adminJwt, workloadKey.toString('base64'), joinToken])
      expect(text).not.toContain(secret);
    expect(text).not.toContain('PRIVATE KEY');
  });
  // Last: the new CA makes the agent renew its SVID, which the log assertions above do not expect.
  it('follows a prepared and then activated X.509 CA in its slot', async () => {
    const prepared = await server.server.ca.prepare('x509', 'test');
    const preparedCert = new X509Certificate(prepared.certificateDer ?? new Uint8Array());
    const whilePrepared = samplesOf(await scrape(), 'ironroot_ca_not_after_seconds', { kind: 'x509' });
    expect(whilePrepared.find((s) => s.labels.state === 'prepared')).toMatchObject({
      labels: { slot: 'B' },
      value: Date.parse(preparedCert.validTo) / 1000,
    });
    await server.server.ca.activate('x509', 'test');
    // The replaced key is old now: only the active one is left, in slot B.
    expect(samplesOf(await scrape(), 'ironroot_ca_not_after_seconds', { kind: 'x509' })).toEqual([
      {
        name: 'ironroot_ca_not_after_seconds',
        labels: { kind: 'x509', slot: 'B', state: 'active' },
        value: Date.parse(preparedCert.validTo) / 1000,
      },
    ]);
  });
});
