import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdirSync, rmdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  healthy,
  startAttestServer,
  startTestAgent,
  TD,
  type TestAgent,
  type TestServer,
  until,
} from '../attestation/harness.js';
import { type ReplayKubelet, startReplayKubelet } from '../helpers/kubelet.js';
import { AGENT_BIN, openTempDir, type RunResult } from '../helpers/workload-api.js';
import { entry, workloadSocketPath, workloadWhere, type X509Json } from './harness.js';

/**
 * This host has no running systemd and no kubelet, but its cgroup hierarchies are mounted and
 * writable (systemd's named v1 hierarchy and the unified one). Moving a real process into
 * `system.slice/<unit>` or `kubepods/…/pod<uid>/<container id>` gives it exactly the
 * `/proc/<pid>/cgroup` lines systemd or a container runtime would, and the agent's attestors read
 * the real `/proc`.
 */
const CGROUP_ROOTS = ['/sys/fs/cgroup/systemd', '/sys/fs/cgroup/unified'];
/** The fixture's container IDs are SHA-256 of the container name; `web` is in pod WEB_POD, ns shop. */
const WEB_CONTAINER = createHash('sha256').update('web').digest('hex');
const WEB_POD = '5f0b3c2e-8d1a-4e6b-9c7f-2a4d6e8f0b1c';

/**
 * `ironroot-agent api fetch x509` in a process that waits on stdin until it has been moved into
 * `cgroup` (in every hierarchy of CGROUP_ROOTS), then execs the client under the same pid.
 */
function fetchX509In(cgroup: string | undefined, socketPath: string): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(
      'sh',
      [
        '-c',
        'read -r _ && exec "$@"',
        'sh',
        process.execPath,
        AGENT_BIN,
        'api',
        'fetch',
        'x509',
        '--output',
        'json',
        '--socket-path',
        socketPath,
      ],
      { stdio: ['pipe', 'pipe', 'pipe'] },
    );
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => {
      stdout += d.toString();
    });
    child.stderr.on('data', (d: Buffer) => {
      stderr += d.toString();
    });
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
    try {
      if (cgroup !== undefined)
        for (const root of CGROUP_ROOTS) writeFileSync(join(root, cgroup, 'cgroup.procs'), String(child.pid));
    } catch (error) {
      child.kill();
      reject(error);
      return;
    }
    child.stdin.end('go\n');
  });
}

function ids(result: RunResult): string[] {
  return (JSON.parse(result.stdout) as X509Json).svids.map((s) => s.spiffe_id);
}

describe('systemd and k8s workload attestors configured on a running agent', () => {
  let server: TestServer;
  let agent: TestAgent;
  let kubelet: ReplayKubelet | undefined;
  let socketPath: string;
  const unit = `ironroot-wl-${randomBytes(4).toString('hex')}.service`;
  const unitCgroup = `system.slice/${unit}`;
  const podCgroup = `kubepods/burstable/pod${WEB_POD}/${WEB_CONTAINER}`;
  const created: string[] = [];
  const serviceId = `spiffe://${TD}/workload/systemd-unit`;
  const webId = `spiffe://${TD}/workload/shop-web`;

  beforeAll(async () => {
    for (const root of CGROUP_ROOTS)
      for (const cgroup of [unitCgroup, podCgroup]) {
        const parts = cgroup.split('/');
        for (let i = 1; i <= parts.length; i++) {
          const dir = join(root, ...parts.slice(0, i));
          if (mkdirSync(dir, { recursive: true }) !== undefined) created.push(dir);
        }
      }
    kubelet = await startReplayKubelet(openTempDir('ironroot-kubelet-'));

    server = await startAttestServer();
    const token = await server.registration.createJoinToken({ ttl: 600, spiffe_id: '' }, 'test');
    socketPath = workloadSocketPath();
    agent = await startTestAgent(server, {
      attestation: 'join_token',
      join_token: token.value,
      socket_path: socketPath,
      sync_interval: '200ms',
      // No unix attestor: whatever identity a process gets came from systemd or k8s selectors.
      workload_attestors: {
        systemd: {},
        k8s: {
          kubelet_url: kubelet.url,
          ca_file: kubelet.caFile,
          token_file: kubelet.tokenFile,
        },
      },
    });
    const agentId = (await until('the agent to attest', () => healthy(agent))).spiffe_id;
    const ds = server.server.datastore;
    await ds.createEntry(entry('/workload/systemd-unit', agentId, [`systemd:id:${unit}`]), 'test');
    await ds.createEntry(
      entry('/workload/shop-web', agentId, ['k8s:ns:shop', 'k8s:container-name:web', 'k8s:sa:web']),
      'test',
    );
    // Every process here runs as this uid: were the unix attestor on, each would get this identity.
    await ds.createEntry(entry('/workload/by-uid', agentId, [`unix:uid:${process.getuid?.() ?? 0}`]), 'test');
    await workloadWhere(agent, 'the three SVIDs in the cache', (w) => w.svids === 3);
  }, 120_000);

  afterAll(async () => {
    await agent?.stop();
    await server?.stop();
    await kubelet?.close();
    // Deepest first; each is empty once its processes have exited.
    for (const dir of [...created].sort((a, b) => b.length - a.length)) rmdirSync(dir);
  });

  it('gives a process in a systemd unit’s cgroup the identity of the entry selecting systemd:id', async () => {
    const result = await fetchX509In(unitCgroup, socketPath);
    expect(result.stderr).toBe('');
    expect(ids(result)).toEqual([serviceId]);
  });

  it('gives a process in a pod container’s cgroup the identity of the entry selecting its kubelet-listed pod', async () => {
    const result = await fetchX509In(podCgroup, socketPath);
    expect(result.stderr).toBe('');
    expect(ids(result)).toEqual([webId]);
  });

  it('gives a process in neither no identity, not even by its uid (the unix attestor is off)', async () => {
    const result = await fetchX509In(undefined, socketPath);
    expect(result.code).not.toBe(0);
    expect(result.stderr).toContain('the agent has no identity for this process');
  });
});
