import { chmodSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { beforeAll, describe, expect, it } from 'vitest';
import { loadAgentConfig } from '../../src/agent/config/load.js';
import { assertBuilt, repoRoot } from '../helpers/dist.js';

// `run` loads its configuration in a worker thread (load-apart.ts), which starts the built
// load-worker.js: the module is taken from dist/, as the executable takes it.
type Apart = typeof import('../../src/agent/config/load-apart.js');
let apart: Apart['loadAgentConfigApart'];

beforeAll(async () => {
  assertBuilt();
  const url = pathToFileURL(join(repoRoot, 'dist/agent/config/load-apart.js')).href;
  ({ loadAgentConfigApart: apart } = (await import(url)) as Apart);
});

function configFile(yaml: string, mode = 0o600): string {
  const file = join(mkdtempSync(join(tmpdir(), 'ironroot-agent-apart-')), 'agent.yaml');
  writeFileSync(file, yaml);
  chmodSync(file, mode);
  return file;
}

/** What loadAgentConfig throws for `options`, as code and message. */
function refusal(options: Parameters<typeof loadAgentConfig>[0]): { code: string; message: string } {
  try {
    loadAgentConfig(options);
  } catch (error) {
    const { code, message } = error as { code: string; message: string };
    return { code, message };
  }
  throw new Error('loadAgentConfig accepted the configuration');
}

describe('agent config loaded in a worker (run)', () => {
  it('gives the configuration loadAgentConfig gives, file and flags laid over it, token file read', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'ironroot-agent-apart-'));
    const tokenFile = join(dir, 'token');
    writeFileSync(tokenFile, 'a-join-token\n', { mode: 0o600 });
    const file = configFile(
      [
        'server_addresses: [a.example.org:8081, b.example.org:8081]',
        'trust_domain: example.org',
        'trust_bundle: /etc/ironroot/bundle.pem',
        'attestation: join_token',
        `join_token_file: ${tokenFile}`,
        'sync_interval: 750ms',
        'workload_attestors: { unix: null, systemd: {} }',
        '',
      ].join('\n'),
    );
    const options = { file, overrides: { log_level: 'debug', data_dir: '/tmp/agent-data' } };
    const config = await apart(options);
    expect(config).toEqual(loadAgentConfig(options));
    expect(config).toMatchObject({ join_token: 'a-join-token', sync_interval: 0.75, log_level: 'debug' });
  });

  it('refuses an invalid configuration with the same code and message, naming key and value', async () => {
    const options = {
      file: configFile('server_address: server.example.org:8081\ntrust_domain: Example.org\n'),
    };
    const expected = refusal(options);
    expect(expected.code).toBe('ERR_AGENT_CONFIG_INVALID');
    await expect(apart(options)).rejects.toMatchObject({ name: 'AgentError', ...expected });
    await expect(apart(options)).rejects.toThrow('trust_domain: got "Example.org"');
  });

  it('refuses an unreadable file and a config holding join_token readable by others, as loadAgentConfig does', async () => {
    const missing = { file: '/nonexistent/ironroot-agent.yaml' };
    expect(refusal(missing).code).toBe('ERR_AGENT_CONFIG_FILE');
    await expect(apart(missing)).rejects.toMatchObject(refusal(missing));
    const readable = {
      file: configFile(
        'server_address: s.example.org:8081\ntrust_domain: example.org\ninsecure_bootstrap: true\njoin_token: t\n',
        0o644,
      ),
    };
    expect(refusal(readable).code).toBe('ERR_AGENT_CONFIG_UNSAFE');
    await expect(apart(readable)).rejects.toMatchObject(refusal(readable));
  });
});
