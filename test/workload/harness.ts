import { join } from 'node:path';
import type { HealthStatus } from '../../src/agent/health.js';
import type { NewEntry } from '../../src/server/datastore/datastore.js';
import { serverSpiffeId } from '../../src/server/identity.js';
import { healthy, TD, type TestAgent, type TestServer, until } from '../attestation/harness.js';
import { AGENT_BIN, openTempDir, type RunResult, runNodeAs } from '../helpers/workload-api.js';

export type Workload = NonNullable<HealthStatus['workload']>;

/** A registration entry with the defaults an operator leaves out. */
export function entry(
  spiffePath: string,
  parentId: string,
  selectors: string[],
  extra: Partial<NewEntry> = {},
): NewEntry {
  return {
    spiffeId: `spiffe://${TD}${spiffePath}`,
    parentId,
    selectors: selectors.map((s) => {
      const at = s.indexOf(':');
      return { type: s.slice(0, at), value: s.slice(at + 1) };
    }),
    x509SvidTtl: 0,
    jwtSvidTtl: 0,
    dnsNames: [],
    admin: false,
    downstream: false,
    federatesWith: [],
    hint: '',
    expiresAt: 0,
    ...extra,
  };
}

export const SERVER_ID = serverSpiffeId(TD);

/** A socket path in a directory every uid can reach (the agent makes the socket 0777). */
export function workloadSocketPath(): string {
  return join(openTempDir('ironroot-wl-'), 'run', 'agent.sock');
}

/** The agent's workload counters once it is attested and `check` holds for them. */
export function workloadWhere(
  agent: TestAgent,
  what: string,
  check: (w: Workload) => boolean,
  timeoutMs = 60_000,
): Promise<Workload> {
  return until(
    what,
    () => {
      const workload = healthy(agent)?.workload;
      return workload !== undefined && workload.socket_path !== '' && check(workload) ? workload : undefined;
    },
    timeoutMs,
  );
}

/**
 * `ironroot-agent api <args>` as `user`, against `socketPath`. Unless the test sets its own, the
 * client waits 60 s (its default is 5 s): a busy agent on a loaded machine is slow, not wrong.
 */
export function api(
  user: { uid: number; gid: number },
  socketPath: string,
  ...args: string[]
): Promise<RunResult> {
  const timeout = args.includes('--timeout') ? [] : ['--timeout', '60s'];
  return runNodeAs(user, [AGENT_BIN, 'api', ...args, ...timeout, '--socket-path', socketPath]);
}

export interface X509Json {
  svids: Array<{ spiffe_id: string; hint: string; not_after: string; certificates: string }>;
  bundles: Record<string, string>;
}

export type { TestServer };
