import { X509Certificate } from 'node:crypto';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BundleSet, SpiffeBundle, TrustDomain, verifyX509Svid, X509Bundle } from '../../src/spiffe/index.js';
import {
  healthy,
  removeHsm,
  startAttestServer,
  startTestAgent,
  TD,
  type TestAgent,
  type TestServer,
  until,
} from '../attestation/harness.js';
import { parseMetrics, type Sample, sumOf } from '../helpers/metrics.js';
import {
  type CliResult,
  type TestServer as CliServer,
  cli,
  freePort,
  startTestServer,
} from '../helpers/server.js';
import { createSoftHsm, type SoftHsm } from '../helpers/softhsm.js';
import { requireFreshDist, systemUser } from '../helpers/workload-api.js';
import { api, workloadSocketPath, type X509Json } from './harness.js';

const PARTNER = 'partner.test';
const PARTNER_TD = TrustDomain.parse(PARTNER);
const FETCHES = 'ironroot_federation_bundle_fetches_total';

/**
 * Two ironroot trust domains on one machine, federated both ways over https_spiffe bundle endpoints:
 * example.org (a server in this process, its CA on the harness's SoftHSM token, with a join-token
 * agent and a workload) and partner.test (the built server as a child process, its CA on a token of
 * its own).
 */
describe('federation between two ironroot trust domains', () => {
  let hsmB: SoftHsm;
  let a: TestServer;
  let b: CliServer;
  let agent: TestAgent;
  let socketPath: string;
  let alice: { uid: number; gid: number };
  const aliceId = `spiffe://${TD}/workload/alice`;
  const partnerId = `spiffe://${PARTNER}/payments`;
  const adminA = () => ['--admin-socket', a.adminSocket];
  const adminB = () => ['--admin-socket', b.socket];
  const ok = (result: CliResult): string => {
    expect(result.stderr).toBe('');
    expect(result.code).toBe(0);
    return result.stdout;
  };
  const storedPartnerBundle = async () => {
    const stored = await a.server.datastore.getBundle(PARTNER);
    return stored === undefined ? undefined : SpiffeBundle.parse(PARTNER_TD, stored.document);
  };
  const metricsOfA = async (): Promise<Sample[]> =>
    parseMetrics((await a.server.health.inject({ method: 'GET', url: '/metrics' })).body);
  const metricsOfB = async (): Promise<Sample[]> =>
    parseMetrics(await (await fetch(`http://127.0.0.1:${b.healthPort}/metrics`)).text());
  const aliceBundles = async (): Promise<Record<string, string>> => {
    const fetched = await api(alice, socketPath, 'fetch', 'x509', '--output', 'json');
    expect(fetched.stderr).toBe('');
    return (JSON.parse(fetched.stdout) as X509Json).bundles;
  };

  beforeAll(async () => {
    requireFreshDist();
    alice = await systemUser('ironroot-wl-a');
    const bPort = await freePort();
    a = await startAttestServer({
      bundle_endpoint: { address: '127.0.0.1:0', profile: 'https_spiffe', refresh_hint: '5s' },
    });
    // After A opened its token: createSoftHsm points SOFTHSM2_CONF, which B's process inherits, at B's.
    hsmB = await createSoftHsm('ironroot-fed-b');
    b = await startTestServer({
      trust_domain: PARTNER,
      key_manager: hsmB.uri(),
      bundle_endpoint: { address: `127.0.0.1:${bPort}`, profile: 'https_spiffe', refresh_hint: '5s' },
    });

    // Each side starts from the other's `bundle show`, handed over out of band as an operator would.
    const dir = mkdtempSync(join(tmpdir(), 'ironroot-federation-'));
    const bundleOfA = join(dir, 'example.org.json');
    const bundleOfB = join(dir, 'partner.test.json');
    writeFileSync(bundleOfA, ok(await cli(['bundle', 'show', ...adminA(), '--format', 'spiffe'])));
    writeFileSync(bundleOfB, ok(await cli(['bundle', 'show', ...adminB(), '--format', 'spiffe'])));
    ok(
      await cli([
        'federation',
        'create',
        ...adminA(),
        '--trust-domain',
        PARTNER,
        '--bundle-endpoint-url',
        `https://127.0.0.1:${bPort}/`,
        '--bundle-endpoint-profile',
        'https_spiffe',
        '--endpoint-spiffe-id',
        `spiffe://${PARTNER}/ironroot/server`,
        '--trust-domain-bundle-format',
        'spiffe',
        '--trust-domain-bundle-path',
        bundleOfB,
      ]),
    );
    ok(
      await cli([
        'federation',
        'create',
        ...adminB(),
        '--trust-domain',
        TD,
        '--bundle-endpoint-url',
        `https://127.0.0.1:${a.server.ports.bundleEndpoint}/`,
        '--bundle-endpoint-profile',
        'https_spiffe',
        '--endpoint-spiffe-id',
        `spiffe://${TD}/ironroot/server`,
        '--trust-domain-bundle-format',
        'spiffe',
        '--trust-domain-bundle-path',
        bundleOfA,
      ]),
    );

    const token = await a.registration.createJoinToken({ ttl: 600, spiffe_id: '' }, 'test');
    socketPath = workloadSocketPath();
    agent = await startTestAgent(a, {
      attestation: 'join_token',
      join_token: token.value,
      socket_path: socketPath,
      sync_interval: '200ms',
    });
    const agentId = (await until('the agent to attest', () => healthy(agent))).spiffe_id;
    ok(
      await cli([
        'entry',
        'create',
        ...adminA(),
        '--parent-id',
        agentId,
        '--spiffe-id',
        aliceId,
        '--selector',
        `unix:uid:${alice.uid}`,
        '--federates-with',
        PARTNER,
      ]),
    );
    await until('alice to get the partner bundle', async () => {
      const bundles = await aliceBundles().catch(() => undefined);
      return bundles?.[`spiffe://${PARTNER}`];
    });
  });
  afterAll(async () => {
    await agent?.stop();
    await a?.stop();
    await b?.stop();
    await hsmB?.cleanup();
    await removeHsm();
  });

  it("each server fetches the other's bundle from its https_spiffe endpoint, without a failure", async () => {
    const fetchedBy = async (metrics: () => Promise<Sample[]>, trustDomain: string) =>
      until(`a fetch of ${trustDomain}'s bundle`, async () => {
        const samples = await metrics();
        const good =
          sumOf(samples, FETCHES, { trust_domain: trustDomain, result: 'unchanged' }) +
          sumOf(samples, FETCHES, { trust_domain: trustDomain, result: 'updated' });
        return good > 0 ? samples : undefined;
      });
    const seenByA = await fetchedBy(metricsOfA, PARTNER);
    const seenByB = await fetchedBy(metricsOfB, TD);
    const failures = (samples: Sample[]) =>
      samples
        .filter((s) => s.name === FETCHES && !['updated', 'unchanged'].includes(s.labels.result ?? ''))
        .map((s) => `${s.labels.trust_domain} ${s.labels.result}`);
    expect(failures(seenByA)).toEqual([]);
    expect(failures(seenByB)).toEqual([]);
  });

  it("gives the workload the partner's bundle, against which the partner's X.509-SVID and JWT-SVID validate", async () => {
    const bundles = await aliceBundles();
    const partnerPem = bundles[`spiffe://${PARTNER}`] ?? '';
    expect(partnerPem).toBe(ok(await cli(['bundle', 'show', ...adminB(), '--format', 'pem'])));

    const out = mkdtempSync(join(tmpdir(), 'ironroot-partner-svid-'));
    ok(await cli(['x509', 'mint', ...adminB(), '--spiffe-id', partnerId, '--write', out]));
    const chain = pemChain(readFileSync(join(out, 'svid.pem'), 'utf8'));
    const verified = verifyX509Svid(chain, new BundleSet([X509Bundle.parsePem(PARTNER_TD, partnerPem)]));
    expect(verified.id.toString()).toBe(partnerId);
    // The partner's bundle is what makes it valid: example.org's roots in its place do not.
    expect(() =>
      verifyX509Svid(
        chain,
        new BundleSet([X509Bundle.parsePem(PARTNER_TD, bundles[`spiffe://${TD}`] ?? '')]),
      ),
    ).toThrow();

    const token = ok(
      await cli(['jwt', 'mint', ...adminB(), '--spiffe-id', partnerId, '--audience', aliceId]),
    ).trim();
    const validated = await api(
      alice,
      socketPath,
      'validate',
      'jwt',
      '--audience',
      aliceId,
      '--svid',
      token,
      '--output',
      'json',
    );
    expect(validated.stderr).toBe('');
    expect(validated.code).toBe(0);
    expect((JSON.parse(validated.stdout) as { spiffe_id: string }).spiffe_id).toBe(partnerId);
  });

  it("carries a CA rotation of the partner to this trust domain's store and its workload", async () => {
    const before = await storedPartnerBundle();
    expect(before?.x509Authorities).toHaveLength(1);
    ok(await cli(['localauthority', 'x509', 'prepare', ...adminB()]));
    const served = ok(await cli(['bundle', 'show', ...adminB(), '--format', 'pem']));
    expect(served.match(/BEGIN CERTIFICATE/g)).toHaveLength(2);

    const after = await until('the prepared partner CA in the stored bundle', async () => {
      const stored = await storedPartnerBundle();
      return stored !== undefined && stored.x509Authorities.length === 2 ? stored : undefined;
    });
    expect(after.x509Authorities.map((c) => c.toString()).join('')).toBe(served);
    expect(after.sequenceNumber).toBeGreaterThan(before?.sequenceNumber ?? 0n);
    const audit = await a.server.datastore.listAudit(100);
    expect(
      audit.some((r) => r.action === 'bundle.set' && r.actor === 'federation' && r.objectId === PARTNER),
    ).toBe(true);
    await until('the workload to see the prepared partner CA', async () => {
      const pem = (await aliceBundles())[`spiffe://${PARTNER}`];
      return pem === served ? pem : undefined;
    });
  });
});

function pemChain(pem: string): X509Certificate[] {
  return (pem.match(/-----BEGIN CERTIFICATE-----[^-]+-----END CERTIFICATE-----/g) ?? []).map(
    (block) => new X509Certificate(block),
  );
}
