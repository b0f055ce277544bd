/**
 * The agent's health endpoint: HTTP on a Unix socket in the data directory (0700, so only the
 * agent's user and root reach it), answering `/live` (the process runs its loop) and `/ready`
 * (healthy by {@link evaluateHealth}'s rule), both with the status as JSON. `ironroot-agent
 * healthcheck` asks it.
 *
 * @module
 */
import { createServer, request, type Server } from 'node:http';
import { join } from 'node:path';
import { claimSocketPath } from '../host/index.js';

export const HEALTH_SOCKET = 'agent-health.sock';

export function healthSocketPath(dataDir: string): string {
  return join(dataDir, HEALTH_SOCKET);
}

/** Why the agent is unhealthy; see {@link evaluateHealth}. */
export type UnhealthyReason = 'NO_AGENT_SVID' | 'SYNC_STALE' | 'SVID_RENEWAL_OVERDUE' | 'SVID_MISSING';

/** No successful sync for this many sync intervals, and at least {@link SYNC_STALE_MIN_SECONDS}: unhealthy. */
export const SYNC_STALE_INTERVALS = 3;
export const SYNC_STALE_MIN_SECONDS = 60;
/** An SVID served past this fraction of its lifetime was not renewed (renewal is due at half): unhealthy. */
export const OVERDUE_FRACTION = 0.75;

export interface HealthVerdict {
  healthy: boolean;
  unhealthy_reasons: UnhealthyReason[];
  /** Unix seconds the first of the served SVIDs (the agent's and the workloads') expires; null: none. */
  soonest_expiry: number | null;
}

/**
 * The rule: unhealthy when the agent holds no valid SVID of its own, or no entry sync succeeded for
 * max(3 × sync_interval, 60 s) (counted from the start before the first), or an SVID it serves (its
 * own or a workload's) has passed 3/4 of its lifetime, i.e. its renewal at half-life did not happen,
 * or, while calls to the server fail, a workload entry has no SVID (it expired unrenewed).
 */
export function evaluateHealth(input: {
  now: number;
  agentSvidValid: boolean;
  lastSyncAt: number;
  syncIntervalSeconds: number;
  served: readonly { notBefore: number; expiresAt: number }[];
  unserved: number;
  failing: boolean;
}): HealthVerdict {
  const reasons: UnhealthyReason[] = [];
  if (!input.agentSvidValid) reasons.push('NO_AGENT_SVID');
  const staleAfter = Math.max(SYNC_STALE_INTERVALS * input.syncIntervalSeconds, SYNC_STALE_MIN_SECONDS);
  if (input.now - input.lastSyncAt > staleAfter) reasons.push('SYNC_STALE');
  if (input.served.some((s) => input.now >= s.notBefore + OVERDUE_FRACTION * (s.expiresAt - s.notBefore)))
    reasons.push('SVID_RENEWAL_OVERDUE');
  // Only while failing: within a sync round that succeeds, new entries wait a moment for theirs.
  if (input.failing && input.unserved > 0) reasons.push('SVID_MISSING');
  const expiries = input.served.map((s) => s.expiresAt);
  return {
    healthy: reasons.length === 0,
    unhealthy_reasons: reasons,
    soonest_expiry: expiries.length > 0 ? Math.min(...expiries) : null,
  };
}

export interface HealthStatus extends HealthVerdict {
  /**
   * healthy: SVID valid and the last call to the server succeeded; degraded: SVID valid, calls
   * failing; unavailable: no valid SVID. `healthy` (the rule) is what `/ready` answers.
   */
  state: 'starting' | 'healthy' | 'degraded' | 'unavailable';
  spiffe_id: string;
  expires_at: number;
  /** The server (ip:port) the last successful call went to; null before the first. */
  server_address: string | null;
  /** The error of the last call to the server, while calls fail; null once one succeeds. */
  last_error: { code: string; message: string } | null;
  consecutive_failures: number;
  /** Unix seconds of the first failure of the current run of failures; null while calls succeed. */
  failing_since: number | null;
  /** Unix seconds of the last entry sync that succeeded; null before the first. */
  last_sync_at: number | null;
  attestations: number;
  renewals: number;
  /**
   * Why the agent serves no identity to its workloads now: the server holds the node untrusted, or
   * refuses the agent as banned (`code`, and the server's `reason`). Null while it serves them.
   */
  suspended: { code: string; reason: string } | null;
  /**
   * Continuous attestation (TPM nodes): the server's last verdict on this node. While untrusted
   * the agent serves no identity.
   */
  reattest?: { trusted: boolean; code: string; reason: string; passed: number; failed: number };
  /** The workloads' side: cached entries and SVIDs, and entry sync counters. */
  workload?: {
    entries: number;
    svids: number;
    socket_path: string;
    syncs: number;
    full_syncs: number;
    entries_received: number;
    svids_issued: number;
    last_sync: { full: boolean; entries: number; deleted: number; pages: number; revision: number } | null;
  };
}

export async function startHealthServer(path: string, status: () => HealthStatus): Promise<Server> {
  // Its path derives from data_dir; a live one belongs to another agent on the same directory.
  await claimSocketPath(path, 'data_dir');
  const server = createServer((req, res) => {
    const current = status();
    const ok = req.url === '/live' ? true : req.url === '/ready' ? current.healthy : undefined;
    if (ok === undefined) {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('use /live or /ready\n');
      return;
    }
    res.writeHead(ok ? 200 : 503, { 'content-type': 'application/json' }).end(`${JSON.stringify(current)}\n`);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(path, () => resolve());
  });
  return server;
}

/** Asks a running agent; resolves to the HTTP status and body, rejects when nothing listens. */
export function queryHealth(
  path: string,
  which: 'live' | 'ready',
): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request({ socketPath: path, path: `/${which}`, method: 'GET', timeout: 5000 }, (res) => {
      let body = '';
      res.on('data', (chunk: Buffer) => {
        body += chunk.toString();
      });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('timeout', () => req.destroy(new Error('the agent did not answer within 5 s')));
    req.on('error', reject);
    req.end();
  });
}
