/**
 * Workload attestors: each looks at a process (by pid, as the kernel reported it on the Workload API
 * socket) and says what it is, as selectors `<type>:<name>:<value>`.
 *
 * @module
 */
import type { Selector } from '../../workload-api/provider.js';

/** One source of workload selectors. */
export interface WorkloadAttestor {
  /** The selector type this attestor produces (`unix`, `systemd`, `k8s`). */
  readonly type: string;
  /**
   * Selectors of process `pid`. Returns none when the process is not of this attestor's kind (e.g.
   * not in a pod); rejects when it cannot tell (process gone, kubelet unreachable).
   */
  attest(pid: number): Promise<Selector[]>;
}

/** Every attestor's selectors for `pid`, in attestor order, without duplicates. */
export async function attestWorkload(
  attestors: readonly WorkloadAttestor[],
  pid: number,
): Promise<Selector[]> {
  const results = await Promise.all(attestors.map((a) => a.attest(pid)));
  return [...new Set(results.flat())];
}
