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
   * Selector kinds (`<type>:<name>`, e.g. `unix:sha256`) this attestor computes only when asked,
   * because they cost a trip to a file system on every call. A caller that knows no entry uses a
   * kind may leave it out (`omit`): a selector no entry names cannot change which entries match.
   */
  readonly onDemand?: readonly string[];
  /**
   * Selectors of process `pid`, without those of the kinds in `omit`. Returns none when the process
   * is not of this attestor's kind (e.g. not in a pod); rejects when it cannot tell (process gone,
   * kubelet unreachable).
   */
  attest(pid: number, omit?: ReadonlySet<string>): Promise<Selector[]>;
}

/** The kind of a selector: its type and name, `unix:sha256` for `unix:sha256:<hex>`. */
export function selectorKind(selector: Selector): string {
  const second = selector.indexOf(':', selector.indexOf(':') + 1);
  return second === -1 ? selector : selector.slice(0, second);
}

/** Every attestor's selectors for `pid` (none of the kinds in `omit`), in attestor order, without duplicates. */
export async function attestWorkload(
  attestors: readonly WorkloadAttestor[],
  pid: number,
  omit?: ReadonlySet<string>,
): Promise<Selector[]> {
  const results = await Promise.all(attestors.map((a) => a.attest(pid, omit)));
  return [...new Set(results.flat())];
}
