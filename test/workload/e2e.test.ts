import { X509Certificate } from 'node:crypto';
import { status } from '@grpc/grpc-js';
import { createRemoteJWKSet, jwtVerify } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  ekCaDir,
  healthy,
  startAttestServer,
  startTestAgent,
  TD,
  type TestAgent,
  type TestServer,
  until,
} from '../attestation/harness.js';
import { RawClient } from '../helpers/raw-client.js';
import { type Swtpm, startSwtpm } from '../helpers/swtpm.js';
import { requireFreshDist, runNodeAs, systemUser, TestCa } from '../helpers/workload-api.js';
import { api, entry, SERVER_ID, workloadSocketPath, workloadWhere, type X509Json } from './harness.js';

/**
 * The whole path: a TPM-attested agent, entries for two uids (one through a node alias matching the
 * TPM's selectors, one parented to the agent itself), SVIDs signed by the server's CA, served on the
 * Workload API to processes running as those uids.
 */
describe('workload identity end to end (TPM-attested agent, two uids)', () => {
  let swtpm: Swtpm;
  let server: TestServer;
  let agent: TestAgent;
  let socketPath: string;
  let alice: { uid: number; gid: number };
  let bob: { uid: number; gid: number };
  let carol: { uid: number; gid: number };
  let oidcPort: number;
  const aliceId = `spiffe://${TD}/workload/alice`;
  const bobId = `spiffe://${TD}/workload/bob`;

  beforeAll(async () => {
    requireFreshDist();
    alice = await systemUser('ironroot-wl-a');
    bob = await systemUser('ironroot-wl-b');
    carol = await systemUser('ironroot-wl-c');
    swtpm = await startSwtpm();
    server = await startAttestServer({
      tpm_attestation: { measured_boot: 'none', ek_ca_dir: ekCaDir(swtpm) },
      jwt_issuer: 'https://oidc.example.org',
      oidc_discovery: { address: '127.0.0.1:0' },
    });
    oidcPort = server.server.ports.oidc ?? 0;
    const ds = server.server.datastore;
    await ds.setFederatedBundle('other.org', (await TestCa.create('other.org')).bundle().marshal(), 'test');
    // Every swtpm node: a node alias by TPM model, and alice's identity below it.
    const alias = await ds.createEntry(entry('/node/swtpm', SERVER_ID, ['tpm:model:swtpm']), 'test');
    await ds.createEntry(
      entry('/workload/alice', alias.spiffeId, [`unix:uid:${alice.uid}`], {
        hint: 'alice',
        dnsNames: ['alice.test'],
        federatesWith: ['other.org'],
      }),
      'test',
    );
    socketPath = workloadSocketPath();
    agent = await startTestAgent(server, {
      tcti: swtpm.tcti,
      socket_path: socketPath,
      sync_interval: '200ms',
    });
    const status = await until('the agent to attest', () => healthy(agent));
    // bob's identity hangs from this very agent.
    await ds.createEntry(entry('/workload/bob', status.spiffe_id, [`unix:uid:${bob.uid}`]), 'test');
    await workloadWhere(agent, 'both SVIDs in the cache', (w) => w.svids === 2);
  }, 120_000);

  afterAll(async () => {
    await agent?.stop();
    await server?.stop();
    await swtpm?.stop();
  });

  it('gives each uid only its own X.509-SVID, signed by the server CA, with the entry’s DNS names', async () => {
    const a = await api(alice, socketPath, 'fetch', 'x509', '--output', 'json');
    const b = await api(bob, socketPath, 'fetch', 'x509', '--output', 'json');
    expect(a.stderr).toBe('');
    expect(b.stderr).toBe('');
    const aliceSvids = (JSON.parse(a.stdout) as X509Json).svids;
    const bobSvids = (JSON.parse(b.stdout) as X509Json).svids;
    expect(aliceSvids.map((s) => [s.spiffe_id, s.hint])).toEqual([[aliceId, 'alice']]);
    expect(bobSvids.map((s) => s.spiffe_id)).toEqual([bobId]);
    // alice's entry federates with other.org, bob's with nobody.
    expect(Object.keys((JSON.parse(a.stdout) as X509Json).bundles).sort()).toEqual([
      `spiffe://${TD}`,
      'spiffe://other.org',
    ]);
    expect(Object.keys((JSON.parse(b.stdout) as X509Json).bundles)).toEqual([`spiffe://${TD}`]);
    const leaf = new X509Certificate(aliceSvids[0]?.certificates ?? '');
    expect(leaf.subjectAltName).toContain(`URI:${aliceId}`);
    expect(leaf.subjectAltName).toContain('DNS:alice.test');
    const roots = server.server.ca.bundle().x509Authorities;
    expect(roots.some((root) => leaf.verify(root.publicKey))).toBe(true);
  });

  it('gives each uid only its own JWT-SVID, valid for `api validate jwt` and against the OIDC JWKS', async () => {
    const a = await api(alice, socketPath, 'fetch', 'jwt', '--audience', 'svc-a', '--output', 'json');
    expect(a.stderr).toBe('');
    const tokens = (JSON.parse(a.stdout) as { svids: { spiffe_id: string; svid: string }[] }).svids;
    expect(tokens.map((t) => t.spiffe_id)).toEqual([aliceId]);
    const token = tokens[0]?.svid ?? '';

    const validated = await api(
      bob,
      socketPath,
      'validate',
      'jwt',
      '--audience',
      'svc-a',
      '--svid',
      token,
      '--output',
      'json',
    );
    expect(validated.stderr).toBe('');
    expect((JSON.parse(validated.stdout) as { spiffe_id: string }).spiffe_id).toBe(aliceId);

    const jwks = createRemoteJWKSet(new URL(`http://127.0.0.1:${oidcPort}/keys`));
    const { payload } = await jwtVerify(token, jwks, {
      audience: 'svc-a',
      issuer: 'https://oidc.example.org',
    });
    expect(payload.sub).toBe(aliceId);

    // bob asking for alice's ID is refused; his own token names him.
    const stolen = await api(bob, socketPath, 'fetch', 'jwt', '--audience', 'svc-a', '--spiffe-id', aliceId);
    expect(stolen.code).not.toBe(0);
    const own = await api(bob, socketPath, 'fetch', 'jwt', '--audience', 'svc-a', '--output', 'json');
    expect(
      (JSON.parse(own.stdout) as { svids: { spiffe_id: string }[] }).svids.map((s) => s.spiffe_id),
    ).toEqual([bobId]);
  });

  it('answers a uid without entries PermissionDenied', async () => {
    // The package's own client, run as carol, reports the gRPC status as a stable code.
    const script = [
      "import { WorkloadApiClient } from 'ironroot/workload-api';",
      `const client = new WorkloadApiClient({ address: 'unix://${socketPath}' });`,
      'try { await client.fetchX509Context(); console.log("ok"); } catch (e) { console.log(e.code); }',
      'client.close();',
    ].join('\n');
    const c = await runNodeAs(carol, ['--input-type=module', '-e', script]);
    expect(c.stderr).toBe('');
    expect(c.stdout.trim()).toBe('ERR_WORKLOADAPI_PERMISSION_DENIED');
  });

  it('answers a request without the security header InvalidArgument', async () => {
    const client = new RawClient(socketPath);
    try {
      const error = await client.stream('FetchX509SVID', RawClient.header(false)).ended;
      expect(error.code).toBe(status.INVALID_ARGUMENT);
    } finally {
      client.close();
    }
  });
});
