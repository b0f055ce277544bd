/**
 * What the agent reports to its metrics, apart from prom-client: the agent reports to a
 * {@link MetricsRelay} from the start, and only when `metrics_address` is set does it load
 * prom-client (./metrics.js) and point the relay at it. Unserved metrics would cost prom-client's
 * code and its default collectors (event-loop histogram, GC observer) in every agent for nothing.
 *
 * @module
 */
import type { WorkloadApiCall } from '../workload-api/server.js';
import type { CacheObserver } from './cache.js';

/** Which SVID: the agent's own, or a workload's. */
export type SvidKind = 'agent' | 'x509' | 'jwt';

export interface MetricsSink extends CacheObserver {
  /** An SVID replaced by a new one: the agent's own as well as a workload's. */
  rotated(kind: SvidKind): void;
  bundleReceived(): void;
  workloadApiCall(call: WorkloadApiCall): void;
  /** Runs `call`, timing it as an issuance of `kind`. */
  timeIssue<T>(kind: SvidKind, call: () => Promise<T>): Promise<T>;
  /** A sync round began; call the function returned when it ends. */
  syncStarted(): () => void;
  syncFailed(code: string): void;
  /** The server in use changed (failover); `reason` is the code that made the agent leave the last one. */
  serverChanged(reason: string): void;
}

const ended = (): void => {};

/** Metrics nobody serves: every report is dropped. */
export const NO_METRICS: MetricsSink = {
  lookup: () => {},
  rotated: () => {},
  caChecked: () => {},
  notComputed: () => {},
  bundleReceived: () => {},
  workloadApiCall: () => {},
  timeIssue: (_kind, call) => call(),
  syncStarted: () => ended,
  syncFailed: () => {},
  serverChanged: () => {},
};

/** Forwards every report to `target`: nothing until metrics are served. */
export class MetricsRelay implements MetricsSink {
  target: MetricsSink = NO_METRICS;

  lookup(result: 'hit' | 'miss'): void {
    this.target.lookup(result);
  }

  rotated(kind: SvidKind): void {
    this.target.rotated(kind);
  }

  caChecked(count: number): void {
    this.target.caChecked(count);
  }

  notComputed(kind: string): void {
    this.target.notComputed(kind);
  }

  bundleReceived(): void {
    this.target.bundleReceived();
  }

  workloadApiCall(call: WorkloadApiCall): void {
    this.target.workloadApiCall(call);
  }

  timeIssue<T>(kind: SvidKind, call: () => Promise<T>): Promise<T> {
    return this.target.timeIssue(kind, call);
  }

  syncStarted(): () => void {
    return this.target.syncStarted();
  }

  syncFailed(code: string): void {
    this.target.syncFailed(code);
  }

  serverChanged(reason: string): void {
    this.target.serverChanged(reason);
  }
}
