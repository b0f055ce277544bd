import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { WorkloadApiClient } from '../../src/workload-api/client.js';
import {
  healthy,
  startAttestServer,
  startTestAgent,
  type TestAgent,
  type TestServer,
  until,
} from '../attestation/harness.js';
import { type Swtpm, startSwtpm } from '../helpers/swtpm.js';
import { entry, workloadSocketPath, workloadWhere } from '../workload/harness.js';

/** One sample of the Prometheus text format: `name{label="value",…} number`. */
interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

function parse(text: string): Sample[] {
  const samples: Sample[] = [];
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (match === null) throw new Error(`not a Prometheus sample line: ${line}`);
    const labels: Record<string, string> = {};
    for (const pair of (match[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g))
      labels[pair[1] ?? ''] = pair[2] ?? '';
    const raw = match[3] ?? '';
    const value = raw === '+Inf' ? Number.POSITIVE_INFINITY : Number(raw);
    samples.push({ name: match[1] ?? '', labels, value });
  }
  return samples;
}

/** The value of the one sample named `name` whose labels include `labels`; undefined: none. */
function sampleValue(
  samples: Sample[],
  name: string,
  labels: Record<string, string> = {},
): number | undefined {
  const found = samples.filter(
    (s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v),
  );
  if (found.length > 1) throw new Error(`${name} ${JSON.stringify(labels)} matches ${found.length} samples`);
  return found[0]?.value;
}

async function scrape(agent: TestAgent): Promise<{ samples: Sample[]; fromMs: number; toMs: number }> {
  const address = agent.agent.metricsAddress;
  if (address === undefined) throw new Error('the agent serves no metrics');
  const fromMs = Date.now();
  const response = await fetch(`http://${address}/metrics`);
  expect(response.status).toBe(200);
  expect(response.headers.get('content-type')).toContain('text/plain');
  const samples = parse(await response.text());
  return { samples, fromMs, toMs: Date.now() };
}

/** Scrapes until `check` holds for the samples. */
function scrapeUntil(
  agent: TestAgent,
  what: string,
  check: (samples: Sample[]) => boolean,
): Promise<Sample[]> {
  return until(what, async () => {
    const { samples } = await scrape(agent);
    return check(samples) ? samples : undefined;
  });
}

describe('agent metrics on metrics_address (TPM-attested agent, real server)', () => {
  let swtpm: Swtpm;
  let server: TestServer;
  let agent: TestAgent;
  let client: WorkloadApiClient;
  let agentId: string;
  let entryId: string;
  const uid = process.getuid?.() ?? 0;

  beforeAll(async () => {
    swtpm = await startSwtpm();
    // A short agent SVID, so a renewal (a rotation of kind agent) happens within the file.
    server = await startAttestServer({
      tpm_attestation: { measured_boot: 'none', ek_trust: 'any' },
      agent_svid_ttl: '6s',
    });
    const socketPath = workloadSocketPath();
    agent = await startTestAgent(server, {
      tcti: swtpm.tcti,
      socket_path: socketPath,
      sync_interval: '200ms',
      metrics_address: '127.0.0.1:0',
    });
    agentId = (await until('the agent to attest', () => healthy(agent))).spiffe_id;
    await workloadWhere(agent, 'the Workload API to listen', () => true);
    client = new WorkloadApiClient({ address: `unix://${socketPath}` });
  }, 120_000);

  afterAll(async () => {
    client?.close();
    await agent?.stop();
    await server?.stop();
    await swtpm?.stop();
  });

  it('serves the agent’s series, process metrics with its prefix, and nothing but /metrics', async () => {
    const { samples, fromMs, toMs } = await scrape(agent);
    expect(sampleValue(samples, 'ironroot_agent_up')).toBe(1);
    expect(sampleValue(samples, 'ironroot_agent_process_cpu_user_seconds_total')).toBeGreaterThan(0);
    expect(sampleValue(samples, 'ironroot_agent_sync_duration_seconds_count')).toBeGreaterThan(0);
    expect(
      sampleValue(samples, 'ironroot_agent_svid_renewal_duration_seconds_count', { kind: 'agent' }),
    ).toBeGreaterThanOrEqual(1);
    // No workload entry yet: nothing served, so no smallest lifetime either.
    expect(sampleValue(samples, 'ironroot_agent_cache_entries')).toBe(0);
    expect(sampleValue(samples, 'ironroot_agent_svid_ttl_seconds_min')).toBe(Number.POSITIVE_INFINITY);
    // The age is the scrape time minus the refresh time (which is whole seconds).
    const refreshed = sampleValue(samples, 'ironroot_agent_bundle_refreshed_timestamp_seconds') ?? 0;
    const age = sampleValue(samples, 'ironroot_agent_bundle_age_seconds') ?? -1;
    expect(refreshed).toBeGreaterThan(0);
    expect(age).toBeGreaterThanOrEqual(0);
    expect(refreshed + age).toBeGreaterThanOrEqual(fromMs / 1000 - 1);
    expect(refreshed + age).toBeLessThanOrEqual(toMs / 1000);
    const other = await fetch(`http://${agent.agent.metricsAddress}/live`);
    expect(other.status).toBe(404);
    await other.body?.cancel();
  });

  it('counts a refused Workload API call by its status, then a served one, and reports the served SVID’s lifetime', async () => {
    await expect(client.fetchX509Context()).rejects.toMatchObject({
      code: 'ERR_WORKLOADAPI_PERMISSION_DENIED',
    });
    entryId = (
      await server.server.datastore.createEntry(entry('/workload/me', agentId, [`unix:uid:${uid}`]), 'test')
    ).id;
    await workloadWhere(agent, 'the workload SVID in the cache', (w) => w.svids === 1);
    const context = await client.fetchX509Context();
    const leaf = context.svids[0]?.svid.certificates[0];
    if (leaf === undefined) throw new Error('no SVID served');
    const notAfterMs = new Date(leaf.validTo).getTime();

    const { samples, fromMs, toMs } = await scrape(agent);
    const calls = (status: string) =>
      sampleValue(samples, 'ironroot_agent_workload_api_calls_total', { rpc: 'FetchX509SVID', status }) ?? 0;
    expect(calls('PERMISSION_DENIED')).toBeGreaterThanOrEqual(1);
    expect(calls('OK')).toBeGreaterThanOrEqual(1);
    expect(
      sampleValue(samples, 'ironroot_agent_cache_lookups_total', { result: 'miss' }),
    ).toBeGreaterThanOrEqual(1);
    expect(
      sampleValue(samples, 'ironroot_agent_cache_lookups_total', { result: 'hit' }),
    ).toBeGreaterThanOrEqual(1);
    expect(sampleValue(samples, 'ironroot_agent_cache_entries')).toBe(1);
    // No entry uses unix:sha256, so neither call had the executable's hash looked up.
    expect(
      sampleValue(samples, 'ironroot_agent_workload_selectors_not_computed_total', { kind: 'unix:sha256' }),
    ).toBeGreaterThanOrEqual(2);
    expect(
      sampleValue(samples, 'ironroot_agent_svid_renewal_duration_seconds_count', { kind: 'x509' }),
    ).toBeGreaterThanOrEqual(1);
    // The only SVID served is the one fetched: its remaining life at the moment of the scrape.
    const ttl = sampleValue(samples, 'ironroot_agent_svid_ttl_seconds_min') ?? 0;
    expect(ttl).toBeGreaterThan(0);
    expect(ttl).toBeLessThanOrEqual((notAfterMs - fromMs) / 1000);
    expect(ttl).toBeGreaterThanOrEqual((notAfterMs - toMs) / 1000);

    // The one SVID is checked against the CA state once, not again at every 200 ms sync round.
    await scrapeUntil(
      agent,
      'the SVID checked against the CA state',
      (s) => sampleValue(s, 'ironroot_agent_svid_ca_checks_total') === 1,
    );
    const syncs = agent.agent.status().workload?.syncs ?? 0;
    await until('three more sync rounds', () => (agent.agent.status().workload?.syncs ?? 0) >= syncs + 3);
    expect(sampleValue((await scrape(agent)).samples, 'ironroot_agent_svid_ca_checks_total')).toBe(1);
  });

  it('mints a JWT-SVID through the server once, then serves it from the cache (a hit)', async () => {
    const before = await scrape(agent);
    const hits = sampleValue(before.samples, 'ironroot_agent_cache_lookups_total', { result: 'hit' }) ?? 0;
    await client.fetchJwtSvid({ audience: ['metrics-test'] });
    await client.fetchJwtSvid({ audience: ['metrics-test'] });
    const { samples } = await scrape(agent);
    expect(sampleValue(samples, 'ironroot_agent_svid_renewal_duration_seconds_count', { kind: 'jwt' })).toBe(
      1,
    );
    expect(
      sampleValue(samples, 'ironroot_agent_workload_api_calls_total', { rpc: 'FetchJWTSVID', status: 'OK' }),
    ).toBe(2);
    // Each call: the caller's identities (hits), and the token: minted (miss), then cached (hit).
    expect(
      sampleValue(samples, 'ironroot_agent_cache_lookups_total', { result: 'hit' }),
    ).toBeGreaterThanOrEqual(hits + 3);
  });

  it('counts a workload X.509-SVID replaced after its entry changed, and the agent SVID renewed', async () => {
    await server.server.datastore.updateEntry(
      entryId,
      entry('/workload/me', agentId, [`unix:uid:${uid}`], { hint: 'changed' }),
      'test',
    );
    await scrapeUntil(
      agent,
      'an x509 rotation',
      (s) => (sampleValue(s, 'ironroot_agent_svid_rotations_total', { kind: 'x509' }) ?? 0) >= 1,
    );
    await scrapeUntil(
      agent,
      'an agent SVID rotation',
      (s) => (sampleValue(s, 'ironroot_agent_svid_rotations_total', { kind: 'agent' }) ?? 0) >= 1,
    );
  });

  it('counts failed sync rounds by error code while the server is away', async () => {
    await server.down();
    try {
      await scrapeUntil(
        agent,
        'a sync failure',
        (s) =>
          (sampleValue(s, 'ironroot_agent_sync_failures_total', { code: 'ERR_AGENT_SERVER_UNAVAILABLE' }) ??
            0) >= 1,
      );
    } finally {
      await server.up();
    }
  });
});
