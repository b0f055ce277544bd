import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from 'prom-client';
import type { CaSlot } from './datastore/datastore.js';

/**
 * Buckets for calls that sign once or a few times: a local token answers in milliseconds, a network
 * HSM under load in hundreds of them.
 */
const SIGN_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5];
/** Buckets for agent API calls: from a cached sync (milliseconds) to a TPM handshake over a WAN. */
const CALL_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];
/**
 * How often (ms) the event-loop lag histogram samples the loop. prom-client's default (Node's, 10 ms)
 * wakes an idle server 100 times a second, which was nearly all of its idle CPU (about 4 ms a
 * second); at 100 ms a stall of 100 ms or more is still always seen, and the lag alerts in
 * docs/operations.md start at 0.5 s.
 */
export const EVENT_LOOP_SAMPLE_MS = 100;

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

  readonly attestationDuration = new Histogram({
    name: 'ironroot_node_attestation_duration_seconds',
    help: 'Time from an AttestAgent or RenewAgent call to its decision, agent round trips included, by method, operation (attest, renew) and result (ok, refused)',
    labelNames: ['method', 'operation', 'result'] as const,
    buckets: CALL_BUCKETS,
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

  readonly syncDuration = new Histogram({
    name: 'ironroot_agent_api_sync_duration_seconds',
    help: 'Time the server took to answer an agent sync call (FetchEntries, BatchNewX509SVID, NewJWTSVID, FetchBundles), by rpc and result (ok, or the refusal code)',
    labelNames: ['rpc', 'result'] as const,
    buckets: CALL_BUCKETS,
    registers: [this.registry],
  });

  readonly svidsIssued = new Counter({
    name: 'ironroot_svids_issued_total',
    help: 'SVIDs signed by the CA, by kind (x509, jwt) and whom for (agent: its own SVID at attestation or renewal; workload: asked for by an agent; admin: x509/jwt mint)',
    labelNames: ['kind', 'issued_to'] as const,
    registers: [this.registry],
  });

  readonly hsmSignDuration = new Histogram({
    name: 'ironroot_hsm_sign_duration_seconds',
    help: 'Time of each signature by the key manager (CA certificates, SVIDs, JWT-SVIDs), failed ones included, by key manager kind (pkcs11, disk, memory)',
    labelNames: ['key_manager'] as const,
    buckets: SIGN_BUCKETS,
    registers: [this.registry],
  });

  readonly hsmSignErrors = new Counter({
    name: 'ironroot_hsm_sign_errors_total',
    help: 'Signatures the key manager failed, by key manager kind and error code (ERR_HSM_…, or ERR_UNKNOWN)',
    labelNames: ['key_manager', 'code'] as const,
    registers: [this.registry],
  });

  readonly federationFetches = new Counter({
    name: 'ironroot_federation_bundle_fetches_total',
    help: "Fetches of federated trust domains' bundles from their bundle endpoints, by trust domain and result (updated, unchanged, or the refusal code ERR_FEDERATION_…)",
    labelNames: ['trust_domain', 'result'] as const,
    registers: [this.registry],
  });

  #caSlots: () => readonly CaSlot[] = () => [];

  readonly caNotAfter: Gauge = new Gauge({
    name: 'ironroot_ca_not_after_seconds',
    help: 'When each active and prepared CA key stops being valid (the X.509 CA certificate notAfter, the JWT key publication end), unix seconds, by kind (x509, jwt), slot (A, B) and state (active, prepared)',
    labelNames: ['kind', 'slot', 'state'] as const,
    registers: [this.registry],
    collect: (): void => {
      // Rebuilt at each scrape: a key that was activated or pruned leaves no stale series behind.
      this.caNotAfter.reset();
      for (const slot of this.#caSlots()) {
        if (slot.state === 'old') continue;
        this.caNotAfter.set({ kind: slot.authority, slot: slot.slot, state: slot.state }, slot.notAfter);
      }
    },
  });

  /** Where the untrusted-node gauge reads its value when scraped. */
  countUntrusted(count: () => number): void {
    this.#untrusted = count;
  }

  /** Where the CA expiry gauge reads the CA journal when scraped. */
  watchCa(slots: () => readonly CaSlot[]): void {
    this.#caSlots = slots;
  }

  constructor() {
    collectDefaultMetrics({
      register: this.registry,
      prefix: 'ironroot_',
      eventLoopMonitoringPrecision: EVENT_LOOP_SAMPLE_MS,
    });
  }
}
