/**
 * The agent's health endpoint: HTTP on a Unix socket in the data directory (0700, so only the
 * agent's user and root reach it), answering `/live` (the process runs its loop) and `/ready`
 * (it holds a valid agent SVID), both with the status as JSON. `ironroot-agent healthcheck` asks it.
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

export interface HealthStatus {
  /** healthy: SVID valid and the server reachable; degraded: SVID valid, server not; unavailable: no valid SVID. */
  state: 'starting' | 'healthy' | 'degraded' | 'unavailable';
  spiffe_id: string;
  expires_at: number;
  last_error: { code: string; message: string } | null;
  attestations: number;
  renewals: number;
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
    const ok =
      req.url === '/live'
        ? true
        : req.url === '/ready'
          ? current.state === 'healthy' || current.state === 'degraded'
          : undefined;
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
