import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { newKeyPair } from '../../src/spiffe/new-key-pair.js';
import { WorkloadApiClient } from '../../src/workload-api/client.js';
import {
  healthy,
  startAttestServer,
  startTestAgent,
  TD,
  type TestAgent,
  type TestServer,
  until,
} from '../attestation/harness.js';
import { cli } from '../helpers/server.js';
import { TestCa } from '../helpers/workload-api.js';
import { entry, workloadSocketPath, workloadWhere } from '../workload/harness.js';

const uid = process.getuid?.() ?? 0;
const REFUSED = 'federated bundle refused';

/** partner.org's bundle with a 1024-bit RSA JWT key: what a server without the weak-key check stored. */
const weakDocument = JSON.stringify({
  keys: [
    {
      ...newKeyPair('rsa', { modulusLength: 1024 }).publicKey.export({ format: 'jwk' }),
      kid: 'weak',
      use: 'jwt-svid',
    },
  ],
});

describe("a federated bundle stored by an older server that fails today's checks", () => {
  let server: TestServer;
  let agent: TestAgent;
  let other: TestCa;
  let socketPath: string;

  beforeAll(async () => {
    server = await startAttestServer();
    other = await TestCa.create('other.org');
    await server.server.datastore.setFederatedBundle('partner.org', weakDocument, 'test.older-server');
    await server.server.datastore.setFederatedBundle('other.org', other.bundle().marshal(), 'test');
    socketPath = workloadSocketPath();
    const token = (await server.registration.createJoinToken({ ttl: 600, spiffe_id: '' }, 'test')).value;
    agent = await startTestAgent(server, {
      attestation: 'join_token',
      join_token: token,
      socket_path: socketPath,
      sync_interval: '200ms',
      metrics_address: '127.0.0.1:0',
    });
  }, 60_000);

  afterAll(async () => {
    await agent?.stop();
    await server?.stop();
  });

  it('does not stop the agent: its own SVIDs are issued, the other federated bundle is served, this one is left out', async () => {
    const agentId = (await until('the agent to attest', () => healthy(agent))).spiffe_id;
    await server.server.datastore.createEntry(
      entry('/federating', agentId, [`unix:uid:${uid}`], { federatesWith: ['other.org', 'partner.org'] }),
      'test',
    );
    const served = await workloadWhere(agent, 'the workload SVID', (w) => w.svids === 1);
    const client = new WorkloadApiClient({ address: `unix://${socketPath}` });
    try {
      const context = await client.fetchX509Context();
      expect(context.svids.map((s) => s.svid.id.toString())).toEqual([`spiffe://${TD}/federating`]);
      expect(
        context.bundles
          .bundles()
          .map((b) => b.trustDomain.name)
          .sort(),
      ).toEqual([TD, 'other.org']);
    } finally {
      client.close();
    }
    const metrics = await (await fetch(`http://${agent.agent.metricsAddress}/metrics`)).text();
    expect(metrics.split('\n')).toContain('ironroot_agent_federated_bundles_refused 1');
    // Reported once, not at every sync round.
    await workloadWhere(agent, 'three more sync rounds', (w) => w.syncs >= served.syncs + 3);
    const refusals = agent.logs.lines.filter((l) => String(l.msg).startsWith(REFUSED));
    expect(refusals).toEqual([
      expect.objectContaining({
        level: 'error',
        trust_domain: 'partner.org',
        reason: 'ERR_BUNDLE_WEAK_KEY',
        err_message: expect.stringMatching(/RSA key of 1024 bits, fewer than the 2048 required/),
      }),
    ]);
  });

  it('bundle list shows it with why it is refused, and the others as before', async () => {
    const listed = await cli(['bundle', 'list', '--admin-socket', server.adminSocket, '--output', 'json']);
    expect(listed.stderr).toBe('');
    expect(listed.code).toBe(0);
    const { bundles } = JSON.parse(listed.stdout) as {
      bundles: { trust_domain: string; document: string; x509_pem: string; refused: string }[];
    };
    expect(bundles.find((b) => b.trust_domain === 'partner.org')).toMatchObject({
      document: weakDocument,
      x509_pem: '',
      refused: expect.stringMatching(/^ERR_BUNDLE_WEAK_KEY: .*1024 bits/),
    });
    expect(bundles.find((b) => b.trust_domain === 'other.org')).toMatchObject({
      x509_pem: other.certificate.toString(),
      refused: '',
    });
    const text = await cli(['bundle', 'list', '--admin-socket', server.adminSocket, '--id', 'partner.org']);
    expect(text.code).toBe(0);
    expect(text.stdout).toMatch(
      /\* partner\.org\n\*+\nrefused \(agents leave it out; replace it with bundle set\): ERR_BUNDLE_WEAK_KEY: /,
    );
  });

  it('federation create refuses to authenticate an https_spiffe endpoint with it; federation show still works', async () => {
    const admin = ['--admin-socket', server.adminSocket];
    const endpoint = ['--trust-domain', 'partner.org', '--bundle-endpoint-url', 'https://partner.org:8443/'];
    const spiffe = await cli([
      'federation',
      'create',
      ...admin,
      ...endpoint,
      '--bundle-endpoint-profile',
      'https_spiffe',
      '--endpoint-spiffe-id',
      'spiffe://partner.org/spire/server',
    ]);
    expect(spiffe.code).toBe(1);
    expect(spiffe.stderr).toMatch(
      /the stored bundle of partner\.org fails this server's checks \(ERR_BUNDLE_WEAK_KEY: .*\), so it cannot authenticate the https_spiffe endpoint; give one that passes/,
    );
    const web = await cli([
      'federation',
      'create',
      ...admin,
      ...endpoint,
      '--bundle-endpoint-profile',
      'https_web',
    ]);
    expect(web.stderr).toBe('');
    expect(web.code).toBe(0);
    const shown = await cli([
      'federation',
      'show',
      ...admin,
      '--trust-domain',
      'partner.org',
      '--output',
      'json',
    ]);
    expect(shown.code).toBe(0);
    expect(JSON.parse(shown.stdout)).toMatchObject({
      trust_domain: 'partner.org',
      bundle: { refresh_hint: 0 },
    });
  });
});
