import { Counter, collectDefaultMetrics, Registry } from 'prom-client';

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

  constructor() {
    collectDefaultMetrics({ register: this.registry, prefix: 'ironroot_' });
  }
}
