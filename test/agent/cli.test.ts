import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { chmodSync, chownSync, mkdtempSync, writeFileSync } from 'node:fs';
import { type AddressInfo, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/server/config/load.js';
import { startAttestServer, TD, type TestServer, until } from '../attestation/harness.js';
import { builtBin } from '../helpers/dist.js';
import { type Swtpm, startSwtpm } from '../helpers/swtpm.js';

const exec = promisify(execFile);
const AGENT = builtBin('ironroot-agent');

async function agentCli(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await exec(process.execPath, [AGENT, ...args]);
    return { code: 0, stdout, stderr };
  } catch (error) {
    const e = error as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

describe('ironroot-agent command line', () => {
  it.each([['run'], ['healthcheck'], ['validate']])('%s --help describes its flags', async (command) => {
    const { stdout } = await agentCli([command, '--help']);
    expect(stdout).toContain(`Usage: ironroot-agent ${command}`);
    if (command === 'run')
      for (const flag of [
        '--server-address',
        '--trust-domain',
        '--trust-bundle',
        '--tcti',
        '--data-dir',
        '--socket-path',
        '--join-token',
        '--insecure-bootstrap',
        '--metrics-address',
      ])
        expect(stdout).toContain(flag);
  });

  it('refuses an invalid config naming key, value and what is allowed', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'ironroot-agent-cfg-'));
    const file = join(dir, 'agent.yaml');
    writeFileSync(
      file,
      'server_address: server\ntrust_domain: Example\nsocket_path: relative.sock\nlisten: x\n',
    );
    const result = await agentCli(['run', '--config', file]);
    expect(result.code).toBe(1);
    expect(result.stderr).toContain(
      'server_address: got "server"; allowed: host:port, e.g. server.example.org:8081 or [::1]:8081',
    );
    expect(result.stderr).toContain('trust_domain: got "Example"; allowed: lowercase letters');
    expect(result.stderr).toContain('socket_path: got "relative.sock"; allowed: an absolute path');
    expect(result.stderr).toContain('listen: unknown key; allowed keys: server_address,');
    expect(result.stderr).toContain('trust_bundle: missing; allowed: a trust_bundle file');
  });

  it('does not echo the join token in configuration errors', async () => {
    const result = await agentCli(['run', '--server-address', 'bad', '--join-token', 'secret-token-value']);
    expect(result.code).toBe(1);
    expect(result.stderr).not.toContain('secret-token-value');
  });

  /** Flags enough to get past validation to the join token; the server is never reached. */
  const joinFlags = ['run', '--server-address', '127.0.0.1:1', '--trust-domain', TD, '--insecure-bootstrap'];

  function tokenFile(mode: number, uid?: number): string {
    const file = join(mkdtempSync(join(tmpdir(), 'ironroot-token-')), 'join-token');
    writeFileSync(file, 'secret-token-value\n');
    chmodSync(file, mode);
    if (uid !== undefined) chownSync(file, uid, uid);
    return file;
  }

  it('refuses a join_token_file that group or others can read, naming the file and its mode', async () => {
    const file = tokenFile(0o640);
    const result = await agentCli([...joinFlags, '--join-token-file', file]);
    expect(result.code).toBe(1);
    expect(result.stderr).toBe(
      `Error (ERR_AGENT_CONFIG_UNSAFE): join_token_file ${file} has mode 0640; it must be 0600 or 0400 (chmod 600 ${file})\n`,
    );
  });

  it('refuses a join_token_file owned by another user, naming the file and its owner', async () => {
    const file = tokenFile(0o600, 65534);
    const result = await agentCli([...joinFlags, '--join-token-file', file]);
    expect(result.code).toBe(1);
    expect(result.stderr).toContain(`join_token_file ${file} is owned by uid 65534, not by uid 0`);
    expect(result.stderr).not.toContain('secret-token-value');
  });

  it('refuses a config file holding join_token inline when group or others can read it', async () => {
    const file = join(mkdtempSync(join(tmpdir(), 'ironroot-agent-cfg-')), 'agent.yaml');
    writeFileSync(
      file,
      `server_address: 127.0.0.1:1\ntrust_domain: ${TD}\ninsecure_bootstrap: true\nattestation: join_token\njoin_token: secret-token-value\n`,
    );
    chmodSync(file, 0o644);
    const result = await agentCli(['run', '--config', file]);
    expect(result.code).toBe(1);
    expect(result.stderr).toContain(
      `config file ${file} holds join_token but is readable by group or others (mode 0644)`,
    );
    expect(result.stderr).not.toContain('secret-token-value');
  });

  it('refuses join_token together with join_token_file', async () => {
    const result = await agentCli([
      ...joinFlags,
      '--join-token',
      'secret-token-value',
      '--join-token-file',
      tokenFile(0o600),
    ]);
    expect(result.code).toBe(1);
    expect(result.stderr).toContain('join_token_file: ');
    expect(result.stderr).toContain('allowed: join_token or join_token_file, not both');
  });

  it('warns in one log line that --join-token on the command line is readable by every user', async () => {
    const dataDir = join(mkdtempSync(join(tmpdir(), 'ironroot-agent-warn-')), 'data');
    const agent = spawn(process.execPath, [
      AGENT,
      ...joinFlags,
      '--data-dir',
      dataDir,
      '--socket-path',
      join(dataDir, '..', 'agent.sock'),
      '--join-token',
      'secret-token-value',
    ]);
    let stdout = '';
    agent.stdout.on('data', (chunk: Buffer) => {
      stdout += chunk.toString();
    });
    try {
      // The server is unreachable, so the agent keeps retrying: what it logged first is all there is to see.
      await until('the agent to log its first attempt', () =>
        stdout.includes('retrying with backoff') ? true : undefined,
      );
    } finally {
      const exited = new Promise((resolve) => agent.once('exit', resolve));
      agent.kill('SIGTERM');
      await exited;
    }
    const warnings = stdout
      .split('\n')
      .filter((line) => line.includes('/proc/<pid>/cmdline'))
      .map((line) => JSON.parse(line) as Record<string, unknown>);
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toMatchObject({ level: 'warn', flag: '--join-token' });
    expect(stdout).not.toContain('secret-token-value');
  });

  it('refuses a --metrics-address in use, naming metrics_address, and exits', async () => {
    const holder = createServer();
    await new Promise<void>((resolve) => holder.listen(0, '127.0.0.1', resolve));
    const { port } = holder.address() as AddressInfo;
    const dataDir = join(mkdtempSync(join(tmpdir(), 'ironroot-agent-metrics-')), 'data');
    try {
      const result = await agentCli([
        ...joinFlags,
        '--join-token-file',
        tokenFile(0o600),
        '--data-dir',
        dataDir,
        '--socket-path',
        join(dataDir, '..', 'agent.sock'),
        '--metrics-address',
        `127.0.0.1:${port}`,
      ]);
      expect(result.code).toBe(1);
      expect(result.stderr).toContain(
        `metrics_address 127.0.0.1:${port} is in use by another process; stop it, or choose another port for metrics_address`,
      );
    } finally {
      holder.close();
    }
  });

  it('healthcheck fails with a clear message when no agent runs', async () => {
    const result = await agentCli([
      'healthcheck',
      '--data-dir',
      mkdtempSync(join(tmpdir(), 'ironroot-none-')),
    ]);
    expect(result.code).toBe(1);
    expect(result.stderr).toContain('no agent answers on');
  });
});

describe('server TPM policy from configuration', () => {
  it('refuses a tpm_attestation section that admits no EK, unless ek_trust is any', () => {
    const dir = mkdtempSync(join(tmpdir(), 'ironroot-srv-cfg-'));
    const file = join(dir, 'server.yaml');
    writeFileSync(file, `trust_domain: ${TD}\ntpm_attestation:\n  measured_boot: none\n  pcrs: sha256:0-7\n`);
    expect(() => loadConfig({ file })).toThrow(
      /tpm_attestation\.ek_trust: missing; allowed: at least one of ek_ca_dir/,
    );
    writeFileSync(file, `trust_domain: ${TD}\ntpm_attestation:\n  ek_trust: any\n  measured_boot: none\n`);
    expect(loadConfig({ file }).tpm_attestation?.ek_trust).toBe('any');
  });

  it('lays --tpm-* flags over the file', () => {
    const dir = mkdtempSync(join(tmpdir(), 'ironroot-srv-cfg-'));
    const file = join(dir, 'server.yaml');
    writeFileSync(
      file,
      `trust_domain: ${TD}\ntpm_attestation:\n  ek_trust: any\n  measured_boot: none\n  pcrs: sha256:0\n`,
    );
    const config = loadConfig({
      file,
      overrides: { tpm_attestation: { pcrs: 'sha256:0-3,7', ek_ca_dir: '/etc/ek' } },
    });
    expect(config.tpm_attestation).toMatchObject({
      ek_trust: 'any',
      pcrs: 'sha256:0-3,7',
      ek_ca_dir: '/etc/ek',
    });
  });
});

describe('ironroot-agent run from flags alone', () => {
  let swtpm: Swtpm;
  let server: TestServer;
  let child: ChildProcess | undefined;

  beforeAll(async () => {
    swtpm = await startSwtpm();
    server = await startAttestServer({ tpm_attestation: { measured_boot: 'none', ek_trust: 'any' } });
  });

  afterAll(async () => {
    if (child && child.exitCode === null) {
      const exited = new Promise((resolve) => child?.once('exit', resolve));
      child.kill('SIGTERM');
      await exited;
    }
    await server?.stop();
    await swtpm?.stop();
  });

  it('attests with the TPM and answers healthcheck', async () => {
    const dataDir = join(mkdtempSync(join(tmpdir(), 'ironroot-agent-flags-')), 'data');
    child = spawn(process.execPath, [
      AGENT,
      'run',
      '--server-address',
      server.address,
      '--trust-domain',
      TD,
      '--trust-bundle',
      server.bundleFile,
      '--tcti',
      swtpm.tcti,
      '--data-dir',
      dataDir,
      '--socket-path',
      join(dataDir, '..', 'agent.sock'),
    ]);
    const health = await until(
      'healthcheck to pass',
      async () => {
        const result = await agentCli(['healthcheck', '--data-dir', dataDir]);
        return result.code === 0 ? result : undefined;
      },
      60_000,
    );
    expect(JSON.parse(health.stdout)).toMatchObject({ state: 'healthy', attestations: 1 });
    expect(JSON.parse(health.stdout).spiffe_id).toMatch(
      new RegExp(`^spiffe://${TD}/agent/tpm/[0-9a-f]{64}$`),
    );
  });

  it('attests with the join token read from --join-token-file (0600)', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'ironroot-agent-tokenfile-'));
    const dataDir = join(dir, 'data');
    const file = join(dir, 'join-token');
    const token = await server.registration.createJoinToken({ ttl: 0, spiffe_id: '' }, 'test');
    writeFileSync(file, `${token.value}\n`, { mode: 0o600 });
    const agent = spawn(process.execPath, [
      AGENT,
      'run',
      '--server-address',
      server.address,
      '--trust-domain',
      TD,
      '--trust-bundle',
      server.bundleFile,
      '--data-dir',
      dataDir,
      '--socket-path',
      join(dir, 'agent.sock'),
      '--join-token-file',
      file,
    ]);
    try {
      const health = await until(
        'healthcheck to pass',
        async () => {
          const result = await agentCli(['healthcheck', '--data-dir', dataDir]);
          return result.code === 0 ? result : undefined;
        },
        60_000,
      );
      expect(JSON.parse(health.stdout).spiffe_id).toMatch(
        new RegExp(`^spiffe://${TD}/agent/join_token/[0-9a-f]{12}$`),
      );
    } finally {
      const exited = new Promise((resolve) => agent.once('exit', resolve));
      agent.kill('SIGTERM');
      await exited;
    }
  });
});
