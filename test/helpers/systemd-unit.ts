/**
 * Reads the [Service] section of a systemd unit and turns what it says about the process (user,
 * groups, capability bounding set, no_new_privs, umask, runtime and state directories) into the
 * commands that give a process started without systemd the same: `install -d` for the directories,
 * `setpriv` and `umask` for the process. What needs systemd as PID 1 (namespaces, ProtectSystem=,
 * the syscall filter) is not emulated; `systemd-analyze verify` and `security` check those lines.
 */
import { readFileSync } from 'node:fs';

export class ServiceUnit {
  readonly #values = new Map<string, string[]>();

  constructor(text: string) {
    let section = '';
    for (const raw of text.split('\n')) {
      const line = raw.trim();
      if (line === '' || line.startsWith('#') || line.startsWith(';')) continue;
      const header = /^\[(.+)\]$/.exec(line);
      if (header?.[1] !== undefined) {
        section = header[1];
        continue;
      }
      const eq = line.indexOf('=');
      if (section !== 'Service' || eq < 0) continue;
      const key = line.slice(0, eq).trim();
      this.#values.set(key, [...(this.#values.get(key) ?? []), line.slice(eq + 1).trim()]);
    }
  }

  static read(path: string): ServiceUnit {
    return new ServiceUnit(readFileSync(path, 'utf8'));
  }

  /** The last value of `key` (systemd's rule for single-valued settings), or undefined. */
  get(key: string): string | undefined {
    return this.#values.get(key)?.at(-1);
  }

  /** `ExecStart=` as an argv. Refuses what a whitespace split would get wrong. */
  execStart(): string[] {
    const all = this.#values.get('ExecStart') ?? [];
    const line = all[0];
    if (all.length !== 1 || line === undefined) throw new Error(`expected one ExecStart=, got ${all.length}`);
    if (/["'\\$%]/.test(line) || /^[-@:+!]/.test(line)) {
      throw new Error(`ExecStart= uses quoting, variables or prefixes this helper does not parse: ${line}`);
    }
    return line.split(/\s+/);
  }

  get user(): string {
    return this.get('User') ?? 'root';
  }

  /**
   * `install -d` commands making the RuntimeDirectory= and StateDirectory= directories with their
   * modes and owner, as systemd makes them before ExecStart.
   */
  directoryCommands(): string[][] {
    const owner = ['-o', this.user, '-g', this.get('Group') ?? this.user];
    const made = (kind: 'Runtime' | 'State', base: string) =>
      (this.get(`${kind}Directory`) ?? '')
        .split(/\s+/)
        .filter((name) => name !== '')
        .map((name) => [
          'install',
          '-d',
          '-m',
          this.get(`${kind}DirectoryMode`) ?? '0755',
          ...owner,
          `${base}/${name}`,
        ]);
    return [...made('Runtime', '/run'), ...made('State', '/var/lib')];
  }

  /**
   * The unit's ExecStart, wrapped so it runs with the unit's umask, user, group, supplementary
   * groups (`memberOf`: the groups /etc/group lists the user in, which systemd adds too), capability
   * bounding set and no_new_privs.
   */
  command(memberOf: readonly string[]): string[] {
    const groups = [...memberOf, ...(this.get('SupplementaryGroups') ?? '').split(/\s+/)].filter(
      (g) => g !== '',
    );
    const caps = this.get('CapabilityBoundingSet')
      ?.split(/\s+/)
      .filter((c) => c !== '')
      .map((c) => `+${c.replace(/^CAP_/, '').toLowerCase()}`);
    const setpriv = [
      'setpriv',
      `--reuid=${this.user}`,
      `--regid=${this.get('Group') ?? this.user}`,
      groups.length > 0 ? `--groups=${groups.join(',')}` : '--clear-groups',
      ...(caps === undefined ? [] : [`--bounding-set=${['-all', ...caps].join(',')}`]),
      ...(this.get('NoNewPrivileges') === 'yes' ? ['--no-new-privs'] : []),
      '--',
    ];
    const umask = this.get('UMask') ?? '0022';
    return ['/bin/sh', '-c', `umask ${umask} && exec "$@"`, 'sh', ...setpriv, ...this.execStart()];
  }
}
