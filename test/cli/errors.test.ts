import { execFile } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CliError, formatCliError } from '../../src/host/index.js';
import { AdminClient } from '../../src/server/admin/client.js';
import { ServerError } from '../../src/server/errors.js';
import { builtBin } from '../helpers/dist.js';
import { type CliResult, cli, startTestServer, type TestServer } from '../helpers/server.js';

const exec = promisify(execFile);

async function agentCli(args: string[]): Promise<CliResult> {
  try {
    const { stdout, stderr } = await exec(process.execPath, [builtBin('ironroot-agent'), ...args]);
    return { code: 0, stdout, stderr };
  } catch (error) {
    const e = error as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

/** The one JSON line --output json puts on standard error for a failure. */
function jsonError(result: CliResult): unknown {
  expect(result.stderr.endsWith('}\n')).toBe(true);
  expect(result.stderr.trimEnd().split('\n')).toHaveLength(1);
  return JSON.parse(result.stderr);
}

describe('how a failed command is reported', () => {
  it('text names the code first; JSON is {"error": {code, message}}; a message naming its own code says it once', () => {
    const error = new ServerError('ERR_ENTRY_NOT_FOUND', 'no registration entry with id "x"');
    expect(formatCliError(error, 'text')).toBe(
      'Error (ERR_ENTRY_NOT_FOUND): no registration entry with id "x"\n',
    );
    expect(JSON.parse(formatCliError(error, 'json'))).toEqual({
      error: { code: 'ERR_ENTRY_NOT_FOUND', message: 'no registration entry with id "x"' },
    });
    expect(formatCliError(new CliError('ERR_CLI_USAGE', 'ERR_CLI_USAGE: --x is wrong'), 'text')).toBe(
      'Error (ERR_CLI_USAGE): --x is wrong\n',
    );
  });

  it('an error without a stable code is ERR_INTERNAL, never a bare message', () => {
    expect(formatCliError(new Error('boom'), 'text')).toBe('Error (ERR_INTERNAL): boom\n');
    // A Node system error's code (ENOENT) is not one of ours.
    const system = Object.assign(new Error('ENOENT: no such file'), { code: 'ENOENT' });
    expect(formatCliError(system, 'text')).toBe('Error (ERR_INTERNAL): ENOENT: no such file\n');
  });
});

describe('ironroot-server reports admin refusals and local errors with their codes', {
  timeout: 180_000,
}, () => {
  let server: TestServer;
  const admin = () => ['--admin-socket', server.socket];
  const notFound = 'no federation relationship with trust domain "unknown.org"; see "federation list"';

  beforeAll(async () => {
    server = await startTestServer();
  });
  afterAll(async () => {
    await server?.stop();
  });

  it('an admin refusal prints "Error (CODE): message" on stderr, the code the admin API answered, and exits 1', async () => {
    const result = await cli(['federation', 'show', ...admin(), '--trust-domain', 'unknown.org']);
    expect(result).toEqual({
      code: 1,
      stdout: '',
      stderr: `Error (ERR_FEDERATION_NOT_FOUND): ${notFound}\n`,
    });
    const client = new AdminClient(server.socket);
    try {
      await expect(
        client.call('FederationService', 'GetFederationRelationship', { trust_domain: 'unknown.org' }),
      ).rejects.toMatchObject({ errorCode: 'ERR_FEDERATION_NOT_FOUND', message: notFound });
    } finally {
      client.close();
    }
  });

  it('with --output json the refusal is one JSON line on stderr and stdout stays empty', async () => {
    for (const output of [['--output', 'json'], ['--output=json'], ['--json']]) {
      const result = await cli([
        'federation',
        'show',
        ...admin(),
        '--trust-domain',
        'unknown.org',
        ...output,
      ]);
      expect(result.code, output.join(' ')).toBe(1);
      expect(result.stdout, output.join(' ')).toBe('');
      expect(jsonError(result), output.join(' ')).toEqual({
        error: { code: 'ERR_FEDERATION_NOT_FOUND', message: notFound },
      });
    }
  });

  it('a server that does not answer is ERR_UNAVAILABLE, naming the socket', async () => {
    const socket = join(mkdtempSync(join(tmpdir(), 'ironroot-cli-errors-')), 'none.sock');
    const result = await cli(['entry', 'count', '--admin-socket', socket, '--output', 'json']);
    expect(result.code).toBe(1);
    expect(jsonError(result)).toEqual({
      error: {
        code: 'ERR_UNAVAILABLE',
        message: expect.stringContaining(`cannot reach the server's admin socket ${socket}`),
      },
    });
  });

  it('a bad flag value is refused before any call, with its code, in text and in JSON', async () => {
    const text = await cli([
      'x509',
      'mint',
      ...admin(),
      '--spiffe-id',
      'spiffe://example.org/w',
      '--ttl',
      'soon',
    ]);
    expect(text).toEqual({
      code: 1,
      stdout: '',
      stderr: 'Error (ERR_CLI_USAGE): --ttl "soon": allowed: a whole number of seconds\n',
    });
    // The flag parser throws before the command's options exist: --output is read from the command line.
    const json = await cli([
      'x509',
      'mint',
      '--output',
      'json',
      '--ttl',
      'soon',
      '--spiffe-id',
      'spiffe://example.org/w',
    ]);
    expect(json.code).toBe(1);
    expect(jsonError(json)).toEqual({
      error: { code: 'ERR_CLI_USAGE', message: '--ttl "soon": allowed: a whole number of seconds' },
    });
  });

  it('a config file that cannot be read is ERR_CONFIG_FILE, naming it', async () => {
    const missing = join(server.dir, 'no-such.yaml');
    const result = await cli(['entry', 'count', '--config', missing]);
    expect(result.code).toBe(1);
    expect(result.stdout).toBe('');
    expect(result.stderr).toMatch(
      new RegExp(
        `^Error \\(ERR_CONFIG_FILE\\): cannot read config file ${missing.replaceAll('.', '\\.')}: ENOENT`,
      ),
    );
  });
});

describe('usage errors commander finds are reported with ERR_CLI_USAGE too', { timeout: 120_000 }, () => {
  it('an unknown option names the command whose help to read, in text and in JSON', async () => {
    expect(await cli(['entry', 'create', '--spife-id', 'spiffe://example.org/w'])).toEqual({
      code: 1,
      stdout: '',
      stderr:
        'Error (ERR_CLI_USAGE): unknown option \'--spife-id\' (Did you mean --spiffe-id?); see "ironroot-server entry create --help"\n',
    });
    const json = await cli(['entry', 'show', '--output', 'json', '--bogus']);
    expect(json.code).toBe(1);
    expect(json.stdout).toBe('');
    expect(jsonError(json)).toEqual({
      error: {
        code: 'ERR_CLI_USAGE',
        message: 'unknown option \'--bogus\'; see "ironroot-server entry show --help"',
      },
    });
  });

  it('a value not among the choices, and an unknown command, each in one coded line', async () => {
    expect(await cli(['bundle', 'show', '--format', 'der'])).toEqual({
      code: 1,
      stdout: '',
      stderr:
        "Error (ERR_CLI_USAGE): option '--format <format>' argument 'der' is invalid. Allowed choices are pem, spiffe; see \"ironroot-server bundle show --help\"\n",
    });
    expect(await cli(['entries'])).toEqual({
      code: 1,
      stdout: '',
      stderr:
        'Error (ERR_CLI_USAGE): unknown command \'entries\' (Did you mean entry?); see "ironroot-server --help"\n',
    });
  });

  it('a command group given no command prints its commands, then the coded line', async () => {
    const result = await cli(['federation']);
    expect(result.code).toBe(1);
    expect(result.stdout).toBe('');
    const lines = result.stderr.trimEnd().split('\n');
    expect(lines[0]).toBe('Usage: ironroot-server federation [options] [command]');
    expect(result.stderr).toMatch(/\n {2}list \[options\] /);
    expect(lines.at(-1)).toBe('Error (ERR_CLI_USAGE): a command is needed: they are listed above');
  });

  it('ironroot-agent: an unknown option names its command', async () => {
    expect(await agentCli(['run', '--server-adress', 'x:1'])).toEqual({
      code: 1,
      stdout: '',
      stderr:
        'Error (ERR_CLI_USAGE): unknown option \'--server-adress\' (Did you mean --server-address?); see "ironroot-agent run --help"\n',
    });
  });
});

describe('ironroot-agent reports its errors the same way', { timeout: 60_000 }, () => {
  it('a Workload API that is not there is ERR_WORKLOADAPI_UNAVAILABLE, in text and in JSON', async () => {
    const socket = join(mkdtempSync(join(tmpdir(), 'ironroot-cli-errors-')), 'none.sock');
    const text = await agentCli(['api', 'fetch', 'x509', '--socket-path', socket]);
    expect(text.code).toBe(1);
    expect(text.stdout).toBe('');
    expect(text.stderr).toMatch(
      /^Error \(ERR_WORKLOADAPI_UNAVAILABLE\): FetchX509SVID at unix:\/\/.*none\.sock: /,
    );
    const json = await agentCli(['api', 'fetch', 'x509', '--socket-path', socket, '--output', 'json']);
    expect(json.code).toBe(1);
    expect(json.stdout).toBe('');
    expect(jsonError(json)).toEqual({
      error: { code: 'ERR_WORKLOADAPI_UNAVAILABLE', message: expect.stringContaining(socket) },
    });
  });

  it('healthcheck given both --config and --data-dir is ERR_CLI_USAGE', async () => {
    expect(await agentCli(['healthcheck', '--config', '/etc/x.yaml', '--data-dir', '/var/lib/x'])).toEqual({
      code: 1,
      stdout: '',
      stderr: 'Error (ERR_CLI_USAGE): give --config or --data-dir, not both\n',
    });
  });
});
