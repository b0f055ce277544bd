import { spawn } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { until } from '../attestation/harness.js';
import { builtBin } from '../helpers/dist.js';
import { cli, startTestServer, type TestServer } from '../helpers/server.js';

const ISO = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/;
const AGENT = builtBin('ironroot-agent');

type Line = Record<string, unknown>;

function lines(output: string): Line[] {
  return output
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as Line);
}

/** The agent's first log lines with `args`; it cannot reach the server, so it logs and retries. */
async function agentLines(args: string[]): Promise<Line[]> {
  const dataDir = join(mkdtempSync(join(tmpdir(), 'ironroot-agent-log-')), 'data');
  const token = join(dataDir, '..', 'join-token');
  writeFileSync(token, 'not-a-real-token\n', { mode: 0o600 });
  const agent = spawn(process.execPath, [
    AGENT,
    'run',
    '--server-address',
    '127.0.0.1:1',
    '--trust-domain',
    'example.org',
    '--insecure-bootstrap',
    '--data-dir',
    dataDir,
    '--socket-path',
    join(dataDir, '..', 'agent.sock'),
    '--join-token-file',
    token,
    ...args,
  ]);
  let stdout = '';
  agent.stdout.on('data', (chunk: Buffer) => {
    stdout += chunk.toString();
  });
  try {
    await until('the agent to log its first attempt', () =>
      stdout.includes('retrying with backoff') ? true : undefined,
    );
  } finally {
    const exited = new Promise((resolve) => agent.once('exit', resolve));
    agent.kill('SIGTERM');
    await exited;
  }
  return lines(stdout);
}

/** docs/server-config.md and docs/agent-config.md: log_format json (default) and pino. */
describe('log_format of both executables', () => {
  let server: TestServer | undefined;
  afterEach(async () => {
    await server?.stop();
    server = undefined;
  });

  it('server: json by default, with ISO-8601 time and level names', async () => {
    server = await startTestServer();
    const started = lines(server.log()).find((l) => l.msg === 'ironroot-server started');
    expect(started).toMatchObject({ level: 'info', name: 'ironroot-server' });
    expect(started?.time).toMatch(ISO);
  });

  it('server: pino keeps epoch-millisecond time and level numbers', async () => {
    server = await startTestServer({ log_format: 'pino' });
    const logged = lines(server.log());
    const started = logged.find((l) => l.msg === 'ironroot-server started');
    expect(started).toMatchObject({ level: 30, name: 'ironroot-server' });
    expect(Number.isInteger(started?.time)).toBe(true);
    // The development warnings at start are level 40 in this format.
    expect(logged.filter((l) => l.level === 40).length).toBeGreaterThan(0);
  });

  it('server: refuses an unknown log_format, naming the key and the allowed values', async () => {
    const result = await cli(['run', '--trust-domain', 'example.org', '--log-format', 'text']);
    expect(result.code).not.toBe(0);
    expect(result.stderr).toContain('log_format: got "text"; allowed: one of "json", "pino"');
  });

  it('agent: json by default, --log-format pino for numbers', async () => {
    const json = await agentLines([]);
    expect(json.length).toBeGreaterThan(0);
    for (const line of json) {
      expect(line).toMatchObject({ name: 'ironroot-agent' });
      expect(['trace', 'debug', 'info', 'warn', 'error', 'fatal']).toContain(line.level);
      expect(line.time).toMatch(ISO);
    }
    const pino = await agentLines(['--log-format', 'pino']);
    expect(pino.length).toBeGreaterThan(0);
    for (const line of pino) {
      expect(typeof line.level).toBe('number');
      expect(Number.isInteger(line.time)).toBe(true);
    }
  });
});
