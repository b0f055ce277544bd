/**
 * `/proc/<pid>/cgroup`: one line per hierarchy, `hierarchy-ID:controllers:path`. Under cgroup v2
 * there is one line, `0::<path>`; under v1 one line per controller, with systemd's own
 * hierarchy as `N:name=systemd:<path>` (or `N:systemd:<path>` on some kernels); hybrid hosts have
 * both.
 *
 * @module
 */
import { join } from 'node:path';
import { readProcFile } from '../../workload-api/procfs.js';

export interface CgroupEntry {
  readonly hierarchy: string;
  readonly controllers: readonly string[];
  readonly path: string;
}

/** Parses the content of `/proc/<pid>/cgroup`. */
export function parseCgroups(text: string): CgroupEntry[] {
  const entries: CgroupEntry[] = [];
  for (const line of text.split('\n')) {
    if (line === '') continue;
    const first = line.indexOf(':');
    const second = line.indexOf(':', first + 1);
    if (first === -1 || second === -1) continue;
    const controllers = line.slice(first + 1, second);
    entries.push({
      hierarchy: line.slice(0, first),
      controllers: controllers === '' ? [] : controllers.split(','),
      // The path itself may contain ':'; everything after the second colon is the path.
      path: line.slice(second + 1),
    });
  }
  return entries;
}

/**
 * Reads and parses `/proc/<pid>/cgroup` under `procRoot`: synchronously, as the unix attestor reads
 * `status` (the kernel renders it from memory; a thread-pool round trip per call would cost more).
 */
export function readCgroups(procRoot: string, pid: number): CgroupEntry[] {
  return parseCgroups(readProcFile(join(procRoot, String(pid), 'cgroup')));
}
