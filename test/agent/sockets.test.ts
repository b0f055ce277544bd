import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { chmodSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { AGENT_DEFAULTS } from '../../src/agent/config/defaults.js';
import { DEFAULTS } from '../../src/server/config/defaults.js';
import { DEFAULT_SOCKET_PATH } from '../../src/workload-api/server.js';
import { until } from '../attestation/harness.js';
import { builtBin } from '../helpers/dist.js';
import { cli, freePort, startTestServer, type TestServer } from '../helpers/server.js';
import { runNodeAs, systemUser } from '../helpers/workload-api.js';

const exec = promisify(execFile);
const AGENT = builtBin('ironroot-agent');
const TD = 'example.org';

async function agentCli(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await exec(process.execPath, [AGENT, ...args]);
    return { code: 0, stdout, stderr };
  } catch (error) {
    const e = error as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

interface RunningAgent {
  child: ChildProcess;
  exited: Promise<number | null>;
  stderr(): string;
}

/** `ironroot-agent run --config file` under umask 077, as systemd's UMask=0077 would start it. */
function runAgent(file: string): RunningAgent {
  const child = spawn(
    '/bin/sh',
    ['-c', 'umask 077 && exec "$0" "$@"', process.execPath, AGENT, 'run', '--config', file],
    {
      stdio: ['ignore', 'ignore', 'pipe'],
    },
  );
  let stderr = '';
  child.stderr?.on('data', (chunk: Buffer) => {
    stderr += chunk.toString();
  });
  return {
    child,
    exited: new Promise((resolve) => child.on('exit', (code) => resolve(code))),
    stderr: () => stderr,
  };
}

function mode(path: string): number {
  return statSync(path).mode & 0o777;
}

describe('agent sockets: separate directories, one agent per data_dir and socket_path', () => {
  let root: string;
  let server: TestServer;
  let config: Record<string, unknown>;
  let configFile: string;
  let agent: RunningAgent;
  let workload: { uid: number; gid: number };
  const socketPath = () => String(config.socket_path);
  const dataDir = () => String(config.data_dir);

  const variant = (changes: Record<string, unknown>) => {
    const file = join(mkdtempSync(join(tmpdir(), 'ironroot-agent-variant-')), 'agent.yaml');
    writeFileSync(file, stringify({ ...config, ...changes }));
    return file;
  };

  /** What the non-root workload gets from the Workload API. */
  const fetchAsWorkload = () =>
    runNodeAs(workload, [AGENT, 'api', 'fetch', 'x509', '--socket-path', socketPath(), '--output', 'json']);

  beforeAll(async () => {
    workload = await systemUser('ironroot-wapi-a');
    // A temporary root laid out like the real one: /run is 0755, the rest is made by the executables.
    root = mkdtempSync(join(tmpdir(), 'ironroot-root-'));
    chmodSync(root, 0o755);
    mkdirSync(join(root, 'run'), { mode: 0o755 });
    const agentPort = await freePort();
    server = await startTestServer({
      admin_socket: join(root, DEFAULTS.admin_socket),
      bind_address: `127.0.0.1:${agentPort}`,
    });
    const admin = ['--admin-socket', server.socket];
    const bundleFile = join(server.dir, 'bundle.pem');
    writeFileSync(bundleFile, (await cli(['bundle', 'show', ...admin, '--format', 'pem'])).stdout);
    const token = JSON.parse((await cli(['token', 'generate', ...admin, '--output', 'json'])).stdout) as {
      value: string;
    };
    const tokenFile = join(server.dir, 'join-token');
    writeFileSync(tokenFile, token.value, { mode: 0o600 });
    config = {
      server_address: `127.0.0.1:${agentPort}`,
      trust_domain: TD,
      trust_bundle: bundleFile,
      data_dir: join(mkdtempSync(join(tmpdir(), 'ironroot-agent-')), 'data'),
      socket_path: join(root, AGENT_DEFAULTS.socket_path),
      attestation: 'join_token',
      join_token_file: tokenFile,
      sync_interval: '200ms',
      retry_initial: '50ms',
      retry_max: '500ms',
    };
    configFile = variant({});
    agent = runAgent(configFile);
    const health = await until('the agent to attest', async () => {
      const result = await agentCli(['healthcheck', '--data-dir', dataDir()]);
      return result.code === 0 ? (JSON.parse(result.stdout) as { spiffe_id: string }) : undefined;
    });
    const created = await cli([
      'entry',
      'create',
      ...admin,
      '--parent-id',
      health.spiffe_id,
      '--spiffe-id',
      `spiffe://${TD}/workload`,
      '--selector',
      `unix:uid:${workload.uid}`,
    ]);
    expect(created.stderr).toBe('');
  });

  afterAll(async () => {
    if (agent && agent.child.exitCode === null && agent.child.signalCode === null) {
      agent.child.kill('SIGTERM');
      await agent.exited;
    }
    await server?.stop();
  });

  it('puts the default admin socket and Workload API socket in different directories', () => {
    expect(DEFAULTS.admin_socket).toBe('/run/ironroot-server/admin.sock');
    expect(AGENT_DEFAULTS.socket_path).toBe('/run/ironroot-agent/public/api.sock');
    expect(DEFAULT_SOCKET_PATH).toBe(AGENT_DEFAULTS.socket_path);
    expect(dirname(DEFAULTS.admin_socket)).not.toBe(dirname(AGENT_DEFAULTS.socket_path));
  });

  it('makes the documented modes under the default layout, and a non-root workload gets its SVID', async () => {
    const fetched = await until('the workload to get its SVID', async () => {
      const result = await fetchAsWorkload();
      return result.code === 0 ? result : undefined;
    });
    expect(JSON.parse(fetched.stdout).svids.map((s: { spiffe_id: string }) => s.spiffe_id)).toEqual([
      `spiffe://${TD}/workload`,
    ]);
    expect(mode(join(root, 'run', 'ironroot-server'))).toBe(0o750);
    expect(lstatSync(server.socket).mode & 0o777).toBe(0o770);
    expect(mode(join(root, 'run', 'ironroot-agent'))).toBe(0o755);
    expect(mode(join(root, 'run', 'ironroot-agent', 'public'))).toBe(0o755);
    expect(lstatSync(socketPath()).mode & 0o777).toBe(0o777);
    expect(mode(dataDir())).toBe(0o700);
  });

  it('refuses a second agent with the same config by data_dir; the first still answers and serves', async () => {
    const second = runAgent(configFile);
    expect(await second.exited).toBe(1);
    expect(second.stderr()).toContain(
      `Error (ERR_DATA_DIR_LOCKED): data_dir ${dataDir()} is in use by another ironroot-agent (pid ${agent.child.pid})`,
    );
    expect((await agentCli(['healthcheck', '--data-dir', dataDir()])).code).toBe(0);
    expect(lstatSync(socketPath()).isSocket()).toBe(true);
    expect((await fetchAsWorkload()).code).toBe(0);
  });

  it('refuses an agent on another data_dir but the same socket_path by socket_path, leaving the socket alone', async () => {
    const second = runAgent(
      variant({ data_dir: join(mkdtempSync(join(tmpdir(), 'ironroot-agent-')), 'data') }),
    );
    expect(await second.exited).toBe(1);
    expect(second.stderr()).toBe(
      `Error (ERR_SOCKET_IN_USE): socket_path ${socketPath()} is served by another running process; stop it, or choose another socket_path\n`,
    );
    expect((await fetchAsWorkload()).code).toBe(0);
  });

  it('validate runs the checks run makes: a locked data_dir, a served socket_path, a missing trust_bundle', async () => {
    const locked = await agentCli(['validate', '--config', configFile, '--output', 'json']);
    expect(locked.code).toBe(1);
    expect(JSON.parse(locked.stdout)).toMatchObject({ valid: false, code: 'ERR_DATA_DIR_LOCKED' });

    const otherData = () => join(mkdtempSync(join(tmpdir(), 'ironroot-agent-')), 'data');
    const served = await agentCli([
      'validate',
      '--config',
      variant({ data_dir: otherData() }),
      '--output',
      'json',
    ]);
    expect(JSON.parse(served.stdout)).toMatchObject({ valid: false, code: 'ERR_SOCKET_IN_USE' });

    const missing = join(root, 'no-bundle.pem');
    const noBundle = variant({
      data_dir: otherData(),
      socket_path: join(root, 'other', 'api.sock'),
      trust_bundle: missing,
    });
    const message = `trust_bundle ${missing} cannot be read (ENOENT: no such file or directory, open '${missing}'); write the server's bundle there (ironroot-server bundle show --format pem)`;
    expect(await agentCli(['validate', '--config', noBundle])).toEqual({
      code: 1,
      stdout: '',
      stderr: `Error (ERR_AGENT_CONFIG_FILE): ${message}\n`,
    });
    const run = runAgent(noBundle);
    expect(await run.exited).toBe(1);
    expect(run.stderr()).toBe(`Error (ERR_AGENT_CONFIG_FILE): ${message}\n`);

    const good = variant({ data_dir: otherData(), socket_path: join(root, 'other', 'api.sock') });
    expect(await agentCli(['validate', '--config', good, '--output', 'json'])).toEqual({
      code: 0,
      stdout: `${JSON.stringify({ valid: true, warnings: [] }, null, 2)}\n`,
      stderr: '',
    });
  });

  it('starts again after kill -9 over its stale sockets and lock, and serves the workload again', async () => {
    agent.child.kill('SIGKILL');
    await agent.exited;
    expect(lstatSync(socketPath()).isSocket()).toBe(true);
    agent = runAgent(configFile);
    await until('the restarted agent to serve the workload', async () =>
      (await fetchAsWorkload()).code === 0 ? true : undefined,
    );
    expect(Number(readFileSync(join(dataDir(), 'ironroot-agent.lock'), 'utf8'))).toBe(agent.child.pid);
    expect((await agentCli(['healthcheck', '--data-dir', dataDir()])).code).toBe(0);
  });
});
