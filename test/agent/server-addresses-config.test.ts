import { execFile } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { serverAddresses } from '../../src/agent/config/defaults.js';
import { loadAgentConfig } from '../../src/agent/config/load.js';
import { builtBin } from '../helpers/dist.js';

const exec = promisify(execFile);

/** A config file holding `yaml` after the keys every valid config needs but the servers. */
function configFile(yaml: string): string {
  const file = join(mkdtempSync(join(tmpdir(), 'ironroot-agent-cfg-')), 'agent.yaml');
  writeFileSync(file, `trust_domain: example.org\ninsecure_bootstrap: true\n${yaml}`);
  return file;
}

function errorFor(yaml: string): string {
  try {
    loadAgentConfig({ file: configFile(yaml) });
  } catch (error) {
    expect(error).toMatchObject({ code: 'ERR_AGENT_CONFIG_INVALID' });
    return (error as Error).message;
  }
  throw new Error(`config accepted:\n${yaml}`);
}

describe('agent config: server_address and server_addresses', () => {
  it('takes one server_address as before', () => {
    const config = loadAgentConfig({ file: configFile('server_address: server.example.org:8081\n') });
    expect(config.server_address).toBe('server.example.org:8081');
    expect(serverAddresses(config)).toEqual(['server.example.org:8081']);
  });

  it('takes server_addresses as a YAML list, in order', () => {
    const config = loadAgentConfig({
      file: configFile('server_addresses:\n  - a.example.org:8081\n  - "[::1]:8081"\n  - 10.0.0.7:8081\n'),
    });
    expect(serverAddresses(config)).toEqual(['a.example.org:8081', '[::1]:8081', '10.0.0.7:8081']);
  });

  it('refuses both keys at once, naming both', () => {
    expect(
      errorFor('server_address: a.example.org:8081\nserver_addresses: [b.example.org:8081]\n'),
    ).toContain(
      'server_addresses: got ["b.example.org:8081"]; allowed: server_address (one server) or server_addresses (a list), not both',
    );
  });

  it('refuses neither key, naming both', () => {
    expect(errorFor('')).toContain(
      'server_address: missing; allowed: server_address (host:port of ironroot-server, e.g. server.example.org:8081) or server_addresses (a list of them)',
    );
  });

  it('names the index of each bad element, with its value', () => {
    const message = errorFor('server_addresses:\n  - a.example.org:8081\n  - b.example.org\n  - c:99999\n');
    expect(message).toContain(
      'server_addresses[1]: got "b.example.org"; allowed: host:port, e.g. server.example.org:8081 or [::1]:8081',
    );
    expect(message).toContain('server_addresses[2]: got "c:99999"; allowed: host:port');
    expect(message).not.toContain('server_addresses[0]');
  });

  it('refuses an element that is not a string, by index', () => {
    expect(errorFor('server_addresses:\n  - a.example.org:8081\n  - 8081\n')).toContain(
      'server_addresses[1]: got 8081; allowed: host:port',
    );
  });

  it('refuses an empty list and a repeated server', () => {
    expect(errorFor('server_addresses: []\n')).toContain(
      'server_addresses: got []; allowed: a list of at least one host:port',
    );
    expect(
      errorFor('server_addresses: [a.example.org:8081, b.example.org:8081, a.example.org:8081]\n'),
    ).toContain(
      'server_addresses[2]: got "a.example.org:8081"; allowed: each server once (the same as server_addresses[0])',
    );
  });

  it('refuses a list under server_address, pointing at server_addresses', () => {
    expect(errorFor('server_address: [a.example.org:8081, b.example.org:8081]\n')).toContain(
      'server_address: got ["a.example.org:8081","b.example.org:8081"]; allowed: host:port of ironroot-server, e.g. server.example.org:8081 (for several servers: server_addresses, a list)',
    );
  });

  it('lets a flag replace the servers of the file, whichever key the file used', () => {
    const listed = configFile('server_addresses: [a.example.org:8081, b.example.org:8081]\n');
    const one = loadAgentConfig({ file: listed, overrides: { server_address: 'c.example.org:8081' } });
    expect(serverAddresses(one)).toEqual(['c.example.org:8081']);
    const single = configFile('server_address: a.example.org:8081\n');
    const several = loadAgentConfig({
      file: single,
      overrides: { server_addresses: ['c.example.org:8081', 'd.example.org:8081'] },
    });
    expect(serverAddresses(several)).toEqual(['c.example.org:8081', 'd.example.org:8081']);
  });
});

describe('ironroot-agent run --server-address', () => {
  it('repeated, gives server_addresses: a bad one is named by its index', async () => {
    const run = exec(process.execPath, [
      builtBin('ironroot-agent'),
      'run',
      '--server-address',
      'a.example.org:8081',
      '--server-address',
      'b.example.org',
      '--trust-domain',
      'example.org',
      '--insecure-bootstrap',
    ]);
    await expect(run).rejects.toMatchObject({
      code: 1,
      stderr: expect.stringContaining(
        'server_addresses[1]: got "b.example.org"; allowed: host:port, e.g. server.example.org:8081 or [::1]:8081',
      ),
    });
  });
});
