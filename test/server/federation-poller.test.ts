import { X509Certificate } from 'node:crypto';
import { mkdtempSync, readFileSync } from 'node:fs';
import { createServer, type Server } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { Datastore, FederationRelationship } from '../../src/server/datastore/datastore.js';
import { openSqliteDatastore } from '../../src/server/datastore/sqlite.js';
import {
  FEDERATION_ACTOR,
  FederationPoller,
  REFRESH_HINT_BOUNDS,
  refreshSeconds,
} from '../../src/server/federation/poller.js';
import { createServerLogger } from '../../src/server/log.js';
import { ServerMetrics } from '../../src/server/metrics.js';
import { SpiffeBundle, TrustDomain } from '../../src/spiffe/index.js';
import { newKeyPair } from '../../src/spiffe/new-key-pair.js';
import { LogSink } from '../attestation/harness.js';
import { parseMetrics, sumOf } from '../helpers/metrics.js';
import { opensslCert } from '../helpers/x509.js';

const FIXTURE = readFileSync(
  new URL('../fixtures/federation/spire-domain1.test.json', import.meta.url),
  'utf8',
);
const DOMAIN1 = TrustDomain.parse('domain1.test');
const FIXTURE_CA = SpiffeBundle.parse(DOMAIN1, FIXTURE).x509Authorities;

/** A clock that moves only when told: due times never depend on how long a fetch took. */
class StillClock {
  #now = Date.now();
  now(): number {
    return this.#now;
  }
  advance(seconds: number): void {
    this.#now += seconds * 1000;
  }
}

describe('federation poller', () => {
  let dir: string;
  let webCa: string;
  let extraCa: X509Certificate;
  let server: Server;
  let port: number;
  /** What the endpoint answers next: a document, or an HTTP status to fail with. */
  let answer: string | number;
  /** What happens elsewhere while the endpoint is answering (another server's write, say). */
  let meanwhile: (() => Promise<unknown>) | undefined;
  let requests = 0;

  let datastore: Datastore;
  let clock: StillClock;
  let logs: LogSink;
  let metrics: ServerMetrics;
  let relationships: FederationRelationship[];
  let poller: FederationPoller;

  const relationship = (trustDomain = 'domain1.test'): FederationRelationship => ({
    trustDomain,
    bundleEndpointUrl: `https://127.0.0.1:${port}/`,
    profile: 'https_web',
    createdAt: 1,
    updatedAt: 1,
  });
  const bundleDoc = (o: { hint?: number; sequence: bigint; extra?: boolean }) =>
    new SpiffeBundle(DOMAIN1, {
      x509Authorities: o.extra ? [...FIXTURE_CA, extraCa] : FIXTURE_CA,
      sequenceNumber: o.sequence,
      ...(o.hint !== undefined ? { refreshHintSeconds: o.hint } : {}),
    }).marshal();
  /** Polls once and says how many requests the endpoint saw meanwhile. */
  const poll = async (): Promise<number> => {
    const before = requests;
    await poller.pollOnce();
    return requests - before;
  };
  const federationAudits = async () =>
    (await datastore.listAudit(1000)).filter(
      (a) => a.action === 'bundle.set' && a.actor === FEDERATION_ACTOR,
    );
  const failures = () =>
    logs.lines.filter((l) => l.msg === 'federation: bundle fetch failed; the last good bundle stays in use');
  /** The one failure logged is the refusal of a fetched `spiffe_sequence` older than `stored`. */
  const staleRefusal = (fetched: bigint, stored: bigint) => {
    expect(failures()).toHaveLength(1);
    const [line] = failures();
    expect(line).toMatchObject({ code: 'ERR_FEDERATION_STALE_BUNDLE', trust_domain: 'domain1.test' });
    expect(String(line?.error)).toMatch(
      `spiffe_sequence ${fetched}, older than the ${stored} it served before`,
    );
    return line;
  };

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'ironroot-fed-poller-'));
    const ca = { cert: join(dir, 'ca.pem'), key: join(dir, 'ca.key') };
    await opensslCert({
      ...ca,
      subject: '/CN=fed-poller test CA',
      extensions: ['basicConstraints=critical,CA:TRUE', 'keyUsage=critical,keyCertSign'],
    });
    webCa = readFileSync(ca.cert, 'utf8');
    // A second authority for the foreign bundle's "rotation": any CA certificate will do.
    extraCa = new X509Certificate(webCa);
    const leaf = { cert: join(dir, 'web.pem'), key: join(dir, 'web.key') };
    await opensslCert({
      ...leaf,
      subject: '/CN=web',
      extensions: ['basicConstraints=critical,CA:FALSE', 'subjectAltName=IP:127.0.0.1'],
      issuer: ca,
    });
    server = createServer({ cert: readFileSync(leaf.cert), key: readFileSync(leaf.key) }, (_req, res) => {
      requests += 1;
      void (async () => {
        await meanwhile?.();
        if (typeof answer === 'number') res.writeHead(answer).end();
        else res.writeHead(200, { 'content-type': 'application/json' }).end(answer);
      })();
    });
    port = await new Promise<number>((resolve) => {
      server.listen(0, '127.0.0.1', () => {
        const address = server.address();
        resolve(typeof address === 'object' && address ? address.port : 0);
      });
    });
  });
  afterAll(async () => {
    await new Promise((resolve) => server.close(resolve));
  });

  beforeEach(async () => {
    meanwhile = undefined;
    clock = new StillClock();
    datastore = (await openSqliteDatastore(mkdtempSync(join(dir, 'data-')), clock)).datastore;
    logs = new LogSink();
    metrics = new ServerMetrics();
    relationships = [relationship()];
    poller = new FederationPoller({
      list: async () => relationships,
      datastore,
      clock,
      logger: createServerLogger({ log_level: 'debug', log_format: 'json' }, logs.stream),
      webCa,
      timeoutMs: 10_000,
      fetches: metrics.federationFetches,
    });
    return async () => {
      await poller.stop();
      await datastore.close();
    };
  });

  it('fetches a new relationship at once and again at the refresh hint, storing (audited) only changes', async () => {
    answer = bundleDoc({ hint: 60, sequence: 1n });
    expect(await poll()).toBe(1);
    const first = await datastore.getBundle('domain1.test');
    expect(first).toMatchObject({ document: answer, federated: true, sequence: 1 });
    expect(await federationAudits()).toHaveLength(1);

    clock.advance(59);
    expect(await poll()).toBe(0);
    clock.advance(1);
    expect(await poll()).toBe(1);
    expect((await datastore.getBundle('domain1.test'))?.sequence).toBe(1);
    expect(await federationAudits()).toHaveLength(1);

    answer = bundleDoc({ hint: 60, sequence: 2n, extra: true });
    clock.advance(60);
    expect(await poll()).toBe(1);
    const second = await datastore.getBundle('domain1.test');
    expect(second).toMatchObject({ document: answer, sequence: 2 });
    expect(SpiffeBundle.parse(DOMAIN1, second?.document ?? '').x509Authorities).toHaveLength(2);
    expect(await federationAudits()).toHaveLength(2);

    const samples = parseMetrics(await metrics.registry.metrics());
    const fetches = (result: string) =>
      sumOf(samples, 'ironroot_federation_bundle_fetches_total', { trust_domain: 'domain1.test', result });
    expect([fetches('updated'), fetches('unchanged')]).toEqual([2, 1]);
  });

  it('keeps the last good bundle when fetches fail, retrying with doubling delays capped at the hint', async () => {
    answer = bundleDoc({ hint: 5, sequence: 1n });
    await poll();
    const good = await datastore.getBundle('domain1.test');
    answer = 503;
    clock.advance(5);
    expect(await poll()).toBe(1);
    const delays = [1, 2, 4];
    for (const delay of delays) {
      clock.advance(delay - 1);
      if (delay > 1) expect(await poll()).toBe(0);
      clock.advance(1);
      expect(await poll()).toBe(1);
    }
    expect(failures().map((l) => [l.code, l.retry_in_seconds])).toEqual([
      ['ERR_FEDERATION_HTTP_STATUS', 1],
      ['ERR_FEDERATION_HTTP_STATUS', 2],
      ['ERR_FEDERATION_HTTP_STATUS', 4],
      // 8 would pass the 5-second hint: never later than the hint.
      ['ERR_FEDERATION_HTTP_STATUS', 5],
    ]);
    expect(failures()[0]).toMatchObject({ trust_domain: 'domain1.test', url: `https://127.0.0.1:${port}/` });
    expect(await datastore.getBundle('domain1.test')).toEqual(good);

    answer = bundleDoc({ hint: 5, sequence: 2n, extra: true });
    clock.advance(5);
    expect(await poll()).toBe(1);
    expect((await datastore.getBundle('domain1.test'))?.sequence).toBe(2);
    // Success resets the backoff: the next failure waits one second again.
    answer = 500;
    clock.advance(5);
    await poll();
    expect(failures().at(-1)?.retry_in_seconds).toBe(1);
    const samples = parseMetrics(await metrics.registry.metrics());
    expect(
      sumOf(samples, 'ironroot_federation_bundle_fetches_total', { result: 'ERR_FEDERATION_HTTP_STATUS' }),
    ).toBe(5);
  });

  it('clamps the refresh hint to its bounds, and uses the default without one', async () => {
    expect(refreshSeconds(0)).toBe(REFRESH_HINT_BOUNDS.min);
    expect(refreshSeconds(10 ** 9)).toBe(REFRESH_HINT_BOUNDS.max);
    expect(refreshSeconds(undefined)).toBe(REFRESH_HINT_BOUNDS.default);
    answer = bundleDoc({ hint: 0, sequence: 1n });
    await poll();
    clock.advance(REFRESH_HINT_BOUNDS.min - 1);
    expect(await poll()).toBe(0);
    answer = bundleDoc({ sequence: 1n });
    clock.advance(1);
    expect(await poll()).toBe(1);
    clock.advance(REFRESH_HINT_BOUNDS.default - 1);
    expect(await poll()).toBe(0);
    clock.advance(1);
    expect(await poll()).toBe(1);
  });

  it('picks up removed, added and edited relationships at the next list', async () => {
    answer = bundleDoc({ hint: 60, sequence: 1n });
    await poll();
    relationships = [];
    clock.advance(60);
    expect(await poll()).toBe(0);
    relationships = [relationship()];
    expect(await poll()).toBe(1);
    relationships = [{ ...relationship(), updatedAt: 2 }];
    expect(await poll()).toBe(1);
    // An edit within the same second as the last one: the changed URL still counts as an edit.
    relationships = [
      { ...relationship(), bundleEndpointUrl: `https://127.0.0.1:${port}/edited`, updatedAt: 2 },
    ];
    expect(await poll()).toBe(1);
    expect(await poll()).toBe(0);
  });

  it("never fetches for the server's own trust domain", async () => {
    const own = bundleDoc({ hint: 60, sequence: 7n });
    await datastore.recordCaChange(
      { upsert: [], remove: [], bundle: { trustDomain: 'domain1.test', document: own, sequence: 7 } },
      'test.own-bundle',
      'test',
    );
    answer = bundleDoc({ hint: 60, sequence: 8n, extra: true });
    expect(await poll()).toBe(0);
    expect(failures()[0]).toMatchObject({
      code: 'ERR_FEDERATION_OWN_TRUST_DOMAIN',
      trust_domain: 'domain1.test',
    });
    expect(await datastore.getBundle('domain1.test')).toMatchObject({ document: own, federated: false });
  });

  it('logs the endpoint without its query, which may carry a token, on success and on failure', async () => {
    relationships = [
      { ...relationship(), bundleEndpointUrl: `https://127.0.0.1:${port}/bundle?token=s3cret` },
    ];
    answer = bundleDoc({ hint: 5, sequence: 1n });
    await poll();
    answer = 503;
    clock.advance(5);
    await poll();
    const updated = logs.lines.find((l) => l.msg === 'federation: bundle updated');
    expect(updated?.url).toBe(`https://127.0.0.1:${port}/bundle?…`);
    expect(failures()[0]).toMatchObject({ url: `https://127.0.0.1:${port}/bundle?…` });
    expect(String(failures()[0]?.error)).toContain(`https://127.0.0.1:${port}/bundle?…`);
    expect(JSON.stringify(logs.lines)).not.toContain('s3cret');
  });

  it("replaces a stored bundle that fails today's checks over https_web; https_spiffe refuses to trust it", async () => {
    // As an older server, without the weak-key check, may have stored it.
    const weak = JSON.stringify({
      keys: [
        {
          ...newKeyPair('rsa', { modulusLength: 1024 }).publicKey.export({ format: 'jwk' }),
          kid: 'weak',
          use: 'jwt-svid',
        },
      ],
    });
    await datastore.setFederatedBundle('domain1.test', weak, 'test.older-server');
    answer = bundleDoc({ hint: 60, sequence: 2n });
    expect(await poll()).toBe(1);
    expect(failures()).toEqual([]);
    expect((await datastore.getBundle('domain1.test'))?.document).toBe(answer);

    await datastore.setFederatedBundle('spiffe.test', weak, 'test.older-server');
    relationships = [
      {
        ...relationship('spiffe.test'),
        profile: 'https_spiffe',
        endpointSpiffeId: 'spiffe://spiffe.test/spire/server',
      },
    ];
    expect(await poll()).toBe(0);
    expect(failures()[0]).toMatchObject({
      code: 'ERR_FEDERATION_STORED_BUNDLE_REFUSED',
      trust_domain: 'spiffe.test',
    });
    expect(String(failures()[0]?.error)).toMatch(
      /the stored bundle of spiffe\.test fails this server's checks \(ERR_BUNDLE_WEAK_KEY: .*1024 bits.*\), so it cannot authenticate this https_spiffe endpoint; set one that passes \(bundle set --id spiffe\.test\)/,
    );
    expect((await datastore.getBundle('spiffe.test'))?.document).toBe(weak);
  });

  it('refuses an older spiffe_sequence than the endpoint served before, keeping the last good bundle; an operator override is replaced whatever its sequence', async () => {
    answer = bundleDoc({ hint: 5, sequence: 7n, extra: true });
    await poll();
    const good = await datastore.getBundle('domain1.test');
    expect(good).toMatchObject({ document: answer, endpointSequence: 7n });
    expect((await federationAudits()).at(-1)?.detail).toMatchObject({ endpoint_sequence: '7' });

    // A stale replica: an older document, which would bring the removed authority back.
    answer = bundleDoc({ hint: 5, sequence: 6n });
    clock.advance(5);
    expect(await poll()).toBe(1);
    const refusal = staleRefusal(6n, 7n);
    expect(refusal).toMatchObject({ retry_in_seconds: 1 });
    expect(String(refusal?.error)).toMatch(
      /spiffe_sequence 6, older than the 7 it served before .*the stored bundle stays in use.*bundle set --id domain1\.test --format spiffe --path FILE/,
    );
    expect(await datastore.getBundle('domain1.test')).toEqual(good);
    // The same sequence is not older: a document that did not change is simply unchanged.
    answer = bundleDoc({ hint: 5, sequence: 7n, extra: true });
    clock.advance(1);
    expect(await poll()).toBe(1);
    expect(failures()).toHaveLength(1);
    expect(await datastore.getBundle('domain1.test')).toEqual(good);

    // An operator's bundle, whatever its sequence, holds until the next fetch replaces it.
    const override = bundleDoc({ hint: 5, sequence: 100n });
    await datastore.setFederatedBundle('domain1.test', override, 'test.operator');
    expect((await datastore.getBundle('domain1.test'))?.endpointSequence).toBeUndefined();
    answer = bundleDoc({ hint: 5, sequence: 8n });
    clock.advance(5);
    expect(await poll()).toBe(1);
    expect(await datastore.getBundle('domain1.test')).toMatchObject({
      document: answer,
      endpointSequence: 8n,
    });

    // An operator's bundle the endpoint serves unchanged is taken over, so its sequence counts.
    await datastore.setFederatedBundle('domain1.test', answer, 'test.operator');
    clock.advance(5);
    expect(await poll()).toBe(1);
    expect((await datastore.getBundle('domain1.test'))?.endpointSequence).toBe(8n);
    answer = bundleDoc({ hint: 5, sequence: 3n });
    clock.advance(5);
    await poll();
    expect(failures().at(-1)?.code).toBe('ERR_FEDERATION_STALE_BUNDLE');

    // A document without spiffe_sequence cannot be compared: the most recent fetch is current.
    answer = JSON.stringify({
      ...JSON.parse(bundleDoc({ hint: 5, sequence: 1n })),
      spiffe_sequence: undefined,
    });
    clock.advance(5);
    await poll();
    const unsequenced = await datastore.getBundle('domain1.test');
    expect(SpiffeBundle.parse(DOMAIN1, unsequenced?.document ?? '').sequenceNumber).toBeUndefined();
    expect(unsequenced?.endpointSequence).toBeUndefined();

    const samples = parseMetrics(await metrics.registry.metrics());
    expect(
      sumOf(samples, 'ironroot_federation_bundle_fetches_total', { result: 'ERR_FEDERATION_STALE_BUNDLE' }),
    ).toBe(2);
  });
  it('refuses a fetched bundle older than one another server stored while this one fetched', async () => {
    answer = bundleDoc({ hint: 5, sequence: 7n });
    await poll();
    // While this server fetches, another one sharing the datastore stores sequence 9 from the
    // endpoint; this one is served 8 by a stale replica, newer than the 7 it read before fetching.
    const newer = bundleDoc({ hint: 5, sequence: 9n, extra: true });
    meanwhile = () => datastore.setFederatedBundle('domain1.test', newer, FEDERATION_ACTOR, 9n);
    answer = bundleDoc({ hint: 5, sequence: 8n });
    clock.advance(5);
    expect(await poll()).toBe(1);
    staleRefusal(8n, 9n);
    expect(await datastore.getBundle('domain1.test')).toMatchObject({
      document: newer,
      endpointSequence: 9n,
    });
  });
});
