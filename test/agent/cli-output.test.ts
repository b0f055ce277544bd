import { execFile } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildAgentProgram } from '../../src/agent/cli/main.js';
import { leafHelps, OUTPUT_HELP } from '../helpers/cli.js';
import { builtBin } from '../helpers/dist.js';

const exec = promisify(execFile);
const AGENT = builtBin('ironroot-agent');
const EVENTLOG = join(__dirname, '../fixtures/eventlogs/ovmf/debian-secureboot-cmdline.bin');

async function agentCli(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await exec(process.execPath, [AGENT, ...args]);
    return { code: 0, stdout, stderr };
  } catch (error) {
    const e = error as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

/** The commands that print no data: the daemon and the health probe. */
const AGENT_NOT_DATA = ['run', 'healthcheck'];

describe('ironroot-agent output flags', { timeout: 120_000 }, () => {
  it('every data command offers --output text|json, and none shows the deprecated --json', () => {
    const leaves = leafHelps(buildAgentProgram());
    expect(leaves.map(([command]) => command)).toEqual(
      expect.arrayContaining(['tpm eventlog', 'api fetch x509', 'api watch', 'validate']),
    );
    for (const [command, help] of leaves) {
      expect(help, command).not.toMatch(/--json\b/);
      if (!AGENT_NOT_DATA.includes(command)) expect(help, command).toContain(OUTPUT_HELP);
    }
  });

  it('tpm eventlog takes --output json, the old --json, and pretty for text', async () => {
    const viaOutput = await agentCli(['tpm', 'eventlog', EVENTLOG, '--output', 'json']);
    expect(viaOutput.code).toBe(0);
    const parsed = JSON.parse(viaOutput.stdout) as unknown;
    expect(JSON.parse((await agentCli(['tpm', 'eventlog', EVENTLOG, '--json'])).stdout)).toEqual(parsed);
    const text = await agentCli(['tpm', 'eventlog', EVENTLOG, '--output', 'pretty']);
    expect(text.code).toBe(0);
    expect(text.stdout).toBe((await agentCli(['tpm', 'eventlog', EVENTLOG])).stdout);
    expect(() => JSON.parse(text.stdout)).toThrow();
  });

  it('refuses an --output value other than text, json or pretty, naming it', async () => {
    const result = await agentCli(['tpm', 'eventlog', EVENTLOG, '--output', 'yaml']);
    expect(result.code).toBe(1);
    expect(result.stderr).toContain(
      "option '--output <format>' argument 'yaml' is invalid. allowed: text, json (or pretty, the same as text)",
    );
  });

  describe('api --timeout', () => {
    let silent: Server;
    const sockets: Socket[] = [];
    const socketPath = join(mkdtempSync(join(tmpdir(), 'ironroot-api-timeout-')), 'silent.sock');

    beforeAll(async () => {
      // Accepts connections and never answers: an agent that hangs.
      silent = createServer((socket) => sockets.push(socket));
      await new Promise<void>((resolve) => silent.listen(socketPath, resolve));
    });
    afterAll(async () => {
      for (const s of sockets) s.destroy();
      await new Promise((resolve) => silent.close(resolve));
    });

    it.each([
      ['fetch', 'x509'],
      ['fetch', 'jwt', '--audience', 'a'],
      ['fetch', 'jwt-bundles'],
      ['validate', 'jwt', '--audience', 'a', '--svid', 'x.y.z'],
    ])(
      'api %s %s fails with ERR_WORKLOADAPI_TIMEOUT naming the socket when no answer comes',
      async (...command) => {
        const result = await agentCli(['api', ...command, '--socket-path', socketPath, '--timeout', '300ms']);
        expect(result.code).toBe(1);
        expect(result.stderr).toContain(
          `Error (ERR_WORKLOADAPI_TIMEOUT): no answer from the Workload API at unix://${socketPath} within 300 ms`,
        );
      },
    );

    it('refuses a --timeout that is not a duration, naming it', async () => {
      const result = await agentCli(['api', 'fetch', 'x509', '--socket-path', socketPath, '--timeout', '5']);
      expect(result.code).toBe(1);
      expect(result.stderr).toContain(
        "option '--timeout <duration>' argument '5' is invalid. allowed: a duration such as 500ms, 5s or 1m",
      );
    });
  });
});
