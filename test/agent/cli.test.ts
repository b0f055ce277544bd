import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
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
});
