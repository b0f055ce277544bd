import { Counter, collectDefaultMetrics, Gauge, Registry } from 'prom-client';

/** The server's metrics, on a registry of its own so tests and embedders never share state. */
export class ServerMetrics {
  readonly registry = new Registry();
  readonly adminCalls = new Counter({
    name: 'ironroot_admin_api_calls_total',
    help: 'Admin API calls by method and result (ok, error, denied)',
    labelNames: ['method', 'result'] as const,
    registers: [this.registry],
  });

  readonly attestations = new Counter({
    name: 'ironroot_node_attestations_total',
    help: 'Agent attestations and renewals by method and result (ok, or the refusal code)',
    labelNames: ['method', 'result'] as const,
    registers: [this.registry],
  });

  readonly ekWorkerJobs = new Counter({
    name: 'ironroot_ek_worker_jobs_total',
    help: 'EK certificate checks (parsing and chain building) by the EK worker threads, by result (ok, or the refusal code)',
    labelNames: ['result'] as const,
    registers: [this.registry],
  });

  readonly reattestations = new Counter({
    name: 'ironroot_node_reattestations_total',
    help: 'Re-quotes of attested TPM nodes (continuous attestation) by result (trusted, or the refusal code)',
    labelNames: ['result'] as const,
    registers: [this.registry],
  });

  #untrusted: () => number = () => 0;

  readonly untrustedNodes: Gauge = new Gauge({
    name: 'ironroot_untrusted_nodes',
    help: 'Attested TPM nodes whose last re-quote failed or went unanswered',
    registers: [this.registry],
    collect: (): void => this.untrustedNodes.set(this.#untrusted()),
  });

  readonly entriesSent = new Counter({
    name: 'ironroot_agent_entries_sent_total',
    help: 'Registration entries (and deletions) sent to agents by FetchEntries, by sync kind (full, incremental)',
    labelNames: ['sync'] as const,
    registers: [this.registry],
  });

  readonly svidsIssued = new Counter({
    name: 'ironroot_workload_svids_issued_total',
    help: 'Workload SVIDs signed for agents, by kind (x509, jwt)',
    labelNames: ['kind'] as const,
    registers: [this.registry],
  });

  /** Where the untrusted-node gauge reads its value when scraped. */
  countUntrusted(count: () => number): void {
    this.#untrusted = count;
  }

  constructor() {
    collectDefaultMetrics({ register: this.registry, prefix: 'ironroot_' });
  }
}
