/**
 * ironroot-agent's Prometheus metrics, on a registry of its own (several agents in one process never
 * share state), and the plain HTTP listener that serves them at `/metrics` on `metrics_address`.
 * Loaded only when `metrics_address` is set (see ./metrics-sink.ts).
 * Nothing here names a workload or a SPIFFE ID: labels are kinds, codes and RPC names only.
 *
 * @module
 */
import { createServer, type Server } from 'node:http';
import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from 'prom-client';
import { bindAddress, splitHostPort } from '../host/index.js';
import type { WorkloadApiCall } from '../workload-api/server.js';
import type { MetricsSink, SvidKind } from './metrics-sink.js';

/** Seconds: from a quick call on a quiet server to a TPM round trip through a busy one. */
const CALL_BUCKETS = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];

/** What the gauges computed at scrape time read. */
export interface MetricsSource {
  /** Unix milliseconds the first served workload X.509-SVID expires; undefined when none is served. */
  soonestExpiryMs(nowMs: number): number | undefined;
  entryCount(): number;
  /** Federated bundles the server sent that this agent refuses (and leaves out). */
  refusedFederatedBundles(): number;
}

export class AgentMetrics implements MetricsSink {
  readonly registry = new Registry();
  readonly #source: MetricsSource;
  readonly #startedAtMs = Date.now();
  #bundleAtMs: number | undefined;

  readonly #up = new Gauge({
    name: 'ironroot_agent_up',
    help: 'Always 1 while the agent runs',
    registers: [this.registry],
  });

  readonly #svidTtlMin: Gauge = new Gauge({
    name: 'ironroot_agent_svid_ttl_seconds_min',
    help: 'Smallest remaining lifetime among the workload X.509-SVIDs the agent serves; +Inf when it serves none',
    registers: [this.registry],
    collect: (): void => {
      const now = Date.now();
      const soonest = this.#source.soonestExpiryMs(now);
      this.#svidTtlMin.set(soonest === undefined ? Number.POSITIVE_INFINITY : (soonest - now) / 1000);
    },
  });

  readonly #rotations = new Counter({
    name: 'ironroot_agent_svid_rotations_total',
    help: 'SVIDs replaced by a new one, by kind (agent: its own; x509, jwt: workload SVIDs)',
    labelNames: ['kind'] as const,
    registers: [this.registry],
  });

  readonly #caChecks = new Counter({
    name: 'ironroot_agent_svid_ca_checks_total',
    help: 'Workload X.509-SVIDs checked against the CA state (active authority and bundle roots); each is checked once per state, so this grows at CA rotations and new SVIDs, not every sync',
    registers: [this.registry],
  });

  readonly #notComputed = new Counter({
    name: 'ironroot_agent_workload_selectors_not_computed_total',
    help: 'Workload attestations that left out an on-demand selector kind (unix:sha256, systemd:fragment_path) because no cached entry used it',
    labelNames: ['kind'] as const,
    registers: [this.registry],
  });

  readonly #renewalDuration = new Histogram({
    name: 'ironroot_agent_svid_renewal_duration_seconds',
    help: 'Duration of the calls to the server that issue or renew SVIDs (agent: attestation and renewal; x509: a batch of CSRs; jwt: one JWT-SVID), successful or not',
    labelNames: ['kind'] as const,
    buckets: CALL_BUCKETS,
    registers: [this.registry],
  });

  readonly #syncDuration = new Histogram({
    name: 'ironroot_agent_sync_duration_seconds',
    help: 'Duration of entry sync rounds (entries, bundles, due X.509-SVIDs), successful or not',
    buckets: CALL_BUCKETS,
    registers: [this.registry],
  });

  readonly #syncFailures = new Counter({
    name: 'ironroot_agent_sync_failures_total',
    help: 'Entry sync rounds that failed, by error code',
    labelNames: ['code'] as const,
    registers: [this.registry],
  });

  readonly #serverChanges = new Counter({
    name: 'ironroot_agent_server_changes_total',
    help: 'Moves to another server in use (failover), by the error code that made the agent leave the last one',
    labelNames: ['reason'] as const,
    registers: [this.registry],
  });

  readonly #bundleRefreshed = new Gauge({
    name: 'ironroot_agent_bundle_refreshed_timestamp_seconds',
    help: 'Unix time the trust bundle was last received from the server; 0 before the first',
    registers: [this.registry],
  });

  readonly #bundleAge: Gauge = new Gauge({
    name: 'ironroot_agent_bundle_age_seconds',
    help: 'Seconds since the trust bundle was last received from the server (since the agent started, before the first)',
    registers: [this.registry],
    collect: (): void => this.#bundleAge.set((Date.now() - (this.#bundleAtMs ?? this.#startedAtMs)) / 1000),
  });

  readonly #cacheEntries: Gauge = new Gauge({
    name: 'ironroot_agent_cache_entries',
    help: 'Registration entries in the SVID cache',
    registers: [this.registry],
    collect: (): void => this.#cacheEntries.set(this.#source.entryCount()),
  });

  readonly #refusedBundles: Gauge = new Gauge({
    name: 'ironroot_agent_federated_bundles_refused',
    help: 'Federated bundles from the server that this agent refuses (fail its checks) and serves no workload',
    registers: [this.registry],
    collect: (): void => this.#refusedBundles.set(this.#source.refusedFederatedBundles()),
  });

  readonly #cacheLookups = new Counter({
    name: 'ironroot_agent_cache_lookups_total',
    help: 'Workload API identity lookups: hit when answered from the cache, miss when nothing was there to serve or a JWT-SVID needed the server',
    labelNames: ['result'] as const,
    registers: [this.registry],
  });

  readonly #workloadApiCalls = new Counter({
    name: 'ironroot_agent_workload_api_calls_total',
    help: 'Workload API calls by RPC and gRPC status (a stream counts once: OK at its first message)',
    labelNames: ['rpc', 'status'] as const,
    registers: [this.registry],
  });

  constructor(source: MetricsSource) {
    this.#source = source;
    this.#up.set(1);
    collectDefaultMetrics({ register: this.registry, prefix: 'ironroot_agent_' });
  }

  lookup(result: 'hit' | 'miss'): void {
    this.#cacheLookups.inc({ result });
  }

  rotated(kind: SvidKind): void {
    this.#rotations.inc({ kind });
  }

  caChecked(count: number): void {
    this.#caChecks.inc(count);
  }

  notComputed(kind: string): void {
    this.#notComputed.inc({ kind });
  }

  bundleReceived(): void {
    this.#bundleAtMs = Date.now();
    this.#bundleRefreshed.set(Math.floor(this.#bundleAtMs / 1000));
  }

  workloadApiCall(call: WorkloadApiCall): void {
    this.#workloadApiCalls.inc({ rpc: call.rpc, status: call.status });
  }

  /** Runs `call` (to the server, issuing SVIDs of `kind`) and records how long it took. */
  async timeIssue<T>(kind: SvidKind, call: () => Promise<T>): Promise<T> {
    const end = this.#renewalDuration.startTimer({ kind });
    try {
      return await call();
    } finally {
      end();
    }
  }

  /** Starts timing a sync round; call what it returns when the round ends, however it ends. */
  syncStarted(): () => void {
    const end = this.#syncDuration.startTimer();
    return () => {
      end();
    };
  }

  syncFailed(code: string): void {
    this.#syncFailures.inc({ code });
  }

  serverChanged(reason: string): void {
    this.#serverChanges.inc({ reason });
  }
}

/**
 * Serves `GET /metrics` over plain HTTP on `address`; a taken or foreign address is refused naming
 * `metrics_address`. Unauthenticated: meant for loopback or a management network.
 */
export async function startMetricsServer(address: string, registry: Registry): Promise<Server> {
  const server = createServer((req, res) => {
    if (req.method !== 'GET' || req.url?.split('?')[0] !== '/metrics') {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('use GET /metrics\n');
      return;
    }
    registry.metrics().then(
      (text) => res.writeHead(200, { 'content-type': registry.contentType }).end(text),
      (error: unknown) =>
        res
          .writeHead(500, { 'content-type': 'text/plain' })
          .end(`metrics failed: ${(error as Error).message}\n`),
    );
  });
  await bindAddress(
    'metrics_address',
    address,
    () =>
      new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen(splitHostPort(address), () => {
          server.off('error', reject);
          resolve();
        });
      }),
  );
  return server;
}
