import { spawn } from 'node:child_process';
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { status } from '@grpc/grpc-js';
import { describe, expect, it } from 'vitest';
import { RawClient } from '../helpers/raw-client.js';
import { openTempDir, requireFreshDist } from '../helpers/workload-api.js';

const fixture = fileURLToPath(new URL('./fixtures/ns-server.mjs', import.meta.url));
const cwd = fileURLToPath(new URL('../../', import.meta.url));

describe('a caller outside the agent PID namespace', () => {
  it('is refused: SO_PEERCRED reports pid 0 and there is no process to attest', async () => {
    requireFreshDist();
    const dir = openTempDir('wapi-pidns-');
    const socketPath = join(dir, 'agent.sock');
    // The agent in a child PID namespace; this test process, outside it, has no pid there.
    const server = spawn(
      'unshare',
      ['--pid', '--fork', '--kill-child', process.execPath, fixture, socketPath],
      {
        cwd,
        stdio: ['ignore', 'pipe', 'inherit'],
      },
    );
    try {
      await new Promise<void>((resolve, reject) => {
        createInterface({ input: server.stdout }).once('line', () => resolve());
        server.once('exit', (code) => reject(new Error(`namespaced server exited with ${code}`)));
      });
      const client = new RawClient(socketPath);
      const error = await client.stream('FetchX509SVID').ended;
      client.close();
      expect(error.code).toBe(status.PERMISSION_DENIED);
      expect(error.details).toContain("not visible in the agent's PID namespace");
    } finally {
      server.kill('SIGKILL');
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
