/**
 * The `systemd` workload attestor: the unit a process runs in (from its cgroup) and the unit file
 * that defines it.
 *
 * systemd reports a unit's file as its `FragmentPath` property over D-Bus. This attestor does not
 * talk to D-Bus (no dependency, and the agent may run where systemd does not); it finds the file
 * the way systemd's loader does: the first unit search path (systemd.unit(5), system manager)
 * holding a file of the unit's name, or for a template instance `name@instance.service`, the
 * template `name@.service`. This equals `FragmentPath` except for units loaded from places
 * outside the search paths (`systemctl link` targets appear at their link in /etc/systemd/system).
 * Transient units (scopes, `systemd-run`) have no file and get no `fragment_path` selector.
 *
 * @module
 */
import { stat } from 'node:fs/promises';
import { join } from 'node:path';
import type { Selector } from '../../workload-api/provider.js';
import type { WorkloadAttestor } from './attestor.js';
import { type CgroupEntry, readCgroups } from './cgroup.js';

/** The system manager's unit search path, highest priority first (systemd.unit(5)). */
export const SYSTEM_UNIT_PATHS: readonly string[] = [
  '/etc/systemd/system.control',
  '/run/systemd/system.control',
  '/run/systemd/transient',
  '/run/systemd/generator.early',
  '/etc/systemd/system',
  '/etc/systemd/system.attached',
  '/run/systemd/system',
  '/run/systemd/system.attached',
  '/run/systemd/generator',
  '/usr/local/lib/systemd/system',
  '/usr/lib/systemd/system',
  '/lib/systemd/system',
  '/run/systemd/generator.late',
];

/** Options of {@link SystemdAttestor}. */
export interface SystemdAttestorOptions {
  /** Where /proc is; default `/proc`. */
  procRoot?: string;
  /** Prefix of the unit search paths (a host root mounted elsewhere); default `/`. */
  rootDir?: string;
  /** Unit search paths; default {@link SYSTEM_UNIT_PATHS}. */
  unitPaths?: readonly string[];
}

const UNIT = /^[A-Za-z0-9:_.\\@-]+\.(service|scope|socket|mount|swap|target|timer|path|device|automount)$/;

/**
 * The unit a cgroup path belongs to, as systemd decides it: the first path component that is not a
 * slice. Only that one counts: below a unit's cgroup, the unit (or a user with a delegated subtree)
 * may create sub-cgroups of any name, including one called `sshd.service`. A process of a user
 * session belongs to `user@<uid>.service`; a delegated sub-cgroup to the service that made it. The
 * cgroup v2 line is used, or on v1 systemd's named hierarchy.
 */
export function unitOfCgroups(entries: readonly CgroupEntry[]): string | undefined {
  const entry =
    entries.find((e) => e.hierarchy === '0' && e.controllers.length === 0) ??
    entries.find((e) => e.controllers.includes('name=systemd') || e.controllers.includes('systemd'));
  if (entry === undefined) return undefined;
  const first = entry.path.split('/').find((part) => part !== '' && !part.endsWith('.slice'));
  return first !== undefined && UNIT.test(first) ? first : undefined;
}

const FRAGMENT_PATH_KIND = 'systemd:fragment_path';

/** Selectors `systemd:id:<unit>` and `systemd:fragment_path:<file>` (unless omitted). */
export class SystemdAttestor implements WorkloadAttestor {
  readonly type = 'systemd';
  /** The unit file is found by stats along the unit search path, on every call. */
  readonly onDemand = [FRAGMENT_PATH_KIND];
  readonly #procRoot: string;
  readonly #rootDir: string;
  readonly #unitPaths: readonly string[];

  constructor(options: SystemdAttestorOptions = {}) {
    this.#procRoot = options.procRoot ?? '/proc';
    this.#rootDir = options.rootDir ?? '/';
    this.#unitPaths = options.unitPaths ?? SYSTEM_UNIT_PATHS;
  }

  async attest(pid: number, omit?: ReadonlySet<string>): Promise<Selector[]> {
    const unit = unitOfCgroups(readCgroups(this.#procRoot, pid));
    if (unit === undefined) return [];
    const selectors: Selector[] = [`systemd:id:${unit}`];
    if (omit?.has(FRAGMENT_PATH_KIND)) return selectors;
    const fragment = await this.#fragmentPath(unit);
    if (fragment !== undefined) selectors.push(`systemd:fragment_path:${fragment}`);
    return selectors;
  }

  async #fragmentPath(unit: string): Promise<string | undefined> {
    const at = unit.indexOf('@');
    const dot = unit.lastIndexOf('.');
    const names = [unit];
    // getty@tty1.service is defined by getty@.service unless an instance file exists.
    if (at !== -1 && at < dot - 1) names.push(`${unit.slice(0, at + 1)}${unit.slice(dot)}`);
    for (const name of names) {
      for (const dir of this.#unitPaths) {
        const path = join(dir, name);
        try {
          if ((await stat(join(this.#rootDir, path))).isFile()) return path;
        } catch {
          // Not in this directory; the search goes on.
        }
      }
    }
    return undefined;
  }
}
