import { mkdtempSync, writeFileSync } from 'node:fs';
import { type AddressInfo, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { describe, expect, it } from 'vitest';
import { Agent } from '../../src/agent/agent.js';
import { loadAgentConfig } from '../../src/agent/config/load.js';

/** Writes `yaml` after the keys every valid config needs and returns loadAgentConfig's message. */
function errorFor(yaml: string): string {
  const file = join(mkdtempSync(join(tmpdir(), 'ironroot-agent-cfg-')), 'agent.yaml');
  writeFileSync(
    file,
    `server_address: server.example.org:8081\ntrust_domain: example.org\ninsecure_bootstrap: true\n${yaml}`,
  );
  try {
    loadAgentConfig({ file });
  } catch (error) {
    expect(error).toMatchObject({ code: 'ERR_AGENT_CONFIG_INVALID' });
    return (error as Error).message;
  }
  throw new Error(`config accepted:\n${yaml}`);
}

function load(yaml: string) {
  const file = join(mkdtempSync(join(tmpdir(), 'ironroot-agent-cfg-')), 'agent.yaml');
  writeFileSync(
    file,
    `server_address: server.example.org:8081\ntrust_domain: example.org\ninsecure_bootstrap: true\n${yaml}`,
  );
  return loadAgentConfig({ file });
}

describe('agent config: sync_interval, socket_path, workload_attestors', () => {
  it('refuses trust_bundle with insecure_bootstrap, naming both keys, and takes trust_bundle alone', () => {
    expect(errorFor('trust_bundle: /etc/ironroot/bundle.pem\n')).toContain(
      'trust_bundle: got "/etc/ironroot/bundle.pem"; allowed: trust_bundle or insecure_bootstrap: true, not both',
    );
    const file = join(mkdtempSync(join(tmpdir(), 'ironroot-agent-cfg-')), 'agent.yaml');
    writeFileSync(
      file,
      'server_address: server.example.org:8081\ntrust_domain: example.org\ntrust_bundle: /etc/ironroot/bundle.pem\n',
    );
    expect(loadAgentConfig({ file })).toMatchObject({
      trust_bundle: '/etc/ironroot/bundle.pem',
      insecure_bootstrap: false,
    });
  });

  it.each([
    ['-5s', 'sync_interval: got "-5s"; allowed: a duration such as 500ms, 30s, 5m, 1h'],
    ['soon', 'sync_interval: got "soon"; allowed: a duration such as 500ms, 30s, 5m, 1h'],
    ['50ms', 'sync_interval: got "50ms"; allowed: a duration of at least 100ms, e.g. 5s'],
  ])('refuses sync_interval %s naming key, value and what is allowed', (value, message) => {
    expect(errorFor(`sync_interval: "${value}"\n`)).toContain(message);
  });

  it('accepts sync_interval 100ms, in seconds', () => {
    expect(load('sync_interval: 100ms\n').sync_interval).toBe(0.1);
  });

  it('refuses a relative socket_path', () => {
    expect(errorFor('socket_path: run/agent.sock\n')).toContain(
      'socket_path: got "run/agent.sock"; allowed: an absolute path',
    );
  });

  it('refuses an unknown workload attestor, listing the attestors there are', () => {
    expect(errorFor('workload_attestors:\n  docker: {}\n')).toContain(
      'workload_attestors.docker: unknown key; allowed keys: unix, systemd, k8s',
    );
  });

  it('refuses options the unix and systemd attestors do not have', () => {
    expect(errorFor('workload_attestors:\n  systemd:\n    proc_root: /host/proc\n')).toContain(
      'workload_attestors.systemd.proc_root: unknown key; allowed keys: (none)',
    );
  });

  it('refuses a kubelet URL that is not https, naming the nested key and value', () => {
    expect(
      errorFor(
        'workload_attestors:\n  k8s:\n    kubelet_url: http://127.0.0.1:10255\n    skip_verify: true\n',
      ),
    ).toContain(
      'workload_attestors.k8s.kubelet_url: got "http://127.0.0.1:10255"; allowed: the kubelet URL, e.g. https://127.0.0.1:10250',
    );
    expect(errorFor('workload_attestors:\n  k8s:\n    kubelet_url: ""\n    skip_verify: true\n')).toContain(
      'workload_attestors.k8s.kubelet_url: got ""; allowed: the kubelet URL',
    );
  });

  it('refuses ca_file together with skip_verify', () => {
    expect(
      errorFor('workload_attestors:\n  k8s:\n    ca_file: /etc/kubelet-ca.pem\n    skip_verify: true\n'),
    ).toContain(
      'workload_attestors.k8s: got {"ca_file":"/etc/kubelet-ca.pem","skip_verify":true}; allowed: ca_file or skip_verify: true, not both',
    );
  });

  it('refuses a k8s attestor with neither ca_file nor skip_verify (the attestor cannot verify the kubelet)', () => {
    expect(errorFor('workload_attestors:\n  k8s: {}\n')).toContain(
      'workload_attestors.k8s: got {}; allowed: ca_file (the kubelet’s CA) or skip_verify: true',
    );
    expect(errorFor('workload_attestors:\n  k8s:\n')).toContain(
      'workload_attestors.k8s: got null; allowed: ca_file (the kubelet’s CA) or skip_verify: true',
    );
  });

  it('refuses relative ca_file and token_file paths', () => {
    const message = errorFor(
      'workload_attestors:\n  k8s:\n    ca_file: kubelet-ca.pem\n    token_file: token\n',
    );
    expect(message).toContain(
      'workload_attestors.k8s.ca_file: got "kubelet-ca.pem"; allowed: an absolute path',
    );
    expect(message).toContain('workload_attestors.k8s.token_file: got "token"; allowed: an absolute path');
  });

  it('defaults to the unix attestor alone; a bare `systemd:` turns systemd on; k8s defaults its kubelet URL', () => {
    expect(load('').workload_attestors).toEqual({ unix: {} });
    expect(load('workload_attestors:\n  systemd:\n').workload_attestors).toEqual({ systemd: null });
    expect(load('workload_attestors:\n  k8s:\n    skip_verify: true\n').workload_attestors).toEqual({
      k8s: { skip_verify: true },
    });
  });
});

describe('agent config: metrics_address', () => {
  it.each([
    [
      'localhost',
      'metrics_address: got "localhost"; allowed: host:port, e.g. 127.0.0.1:9988 or [::1]:9988, port 0..65535',
    ],
    ['127.0.0.1:70000', 'metrics_address: got "127.0.0.1:70000"; allowed: host:port'],
    ['http://127.0.0.1:9988', 'metrics_address: got "http://127.0.0.1:9988"; allowed: host:port'],
  ])('refuses metrics_address %s naming key, value and what is allowed', (value, message) => {
    expect(errorFor(`metrics_address: "${value}"\n`)).toContain(message);
  });

  it('refuses a metrics_address that is not a string, naming the key', () => {
    expect(errorFor('metrics_address: 9988\n')).toContain(
      'metrics_address: got 9988; allowed: host:port, e.g. 127.0.0.1:9988 or [::1]:9988',
    );
  });

  it('is off unless given; accepts host:port and [v6]:port', () => {
    expect(load('').metrics_address).toBeUndefined();
    expect(load('metrics_address: 127.0.0.1:9988\n').metrics_address).toBe('127.0.0.1:9988');
    expect(load('metrics_address: "[::1]:9988"\n').metrics_address).toBe('[::1]:9988');
  });
});

describe('agent run: metrics_address it cannot bind', () => {
  /** An agent that fails at start binds nothing, so its server is never contacted. */
  const agentOn = (metricsAddress: string, dataDir: string) =>
    new Agent(
      loadAgentConfig({
        overrides: {
          server_address: '127.0.0.1:1',
          trust_domain: 'example.org',
          insecure_bootstrap: true,
          data_dir: dataDir,
          socket_path: join(dataDir, '..', 'agent.sock'),
          metrics_address: metricsAddress,
        },
      }),
      pino({ level: 'silent' }),
    );

  it('refuses a port in use, naming metrics_address, and leaves the data directory free', async () => {
    const holder = createServer();
    await new Promise<void>((resolve) => holder.listen(0, '127.0.0.1', resolve));
    const { port } = holder.address() as AddressInfo;
    const dataDir = join(mkdtempSync(join(tmpdir(), 'ironroot-agent-metrics-')), 'data');
    try {
      const refused = agentOn(`127.0.0.1:${port}`, dataDir).start();
      await expect(refused).rejects.toMatchObject({ code: 'ERR_ADDRESS_IN_USE', key: 'metrics_address' });
      await expect(refused).rejects.toThrow(
        `metrics_address 127.0.0.1:${port} is in use by another process; stop it, or choose another port for metrics_address`,
      );
      // The refused start released its lock and health socket: an agent on the same directory starts.
      const next = agentOn('127.0.0.1:0', dataDir);
      await next.start();
      expect(next.metricsAddress).toMatch(/^127\.0\.0\.1:\d+$/);
      await next.stop();
    } finally {
      holder.close();
    }
  });

  it('refuses an address that is not this host’s, naming metrics_address', async () => {
    const dataDir = join(mkdtempSync(join(tmpdir(), 'ironroot-agent-metrics-')), 'data');
    // 192.0.2.0/24 is TEST-NET-1 (RFC 5737): never configured on a host.
    await expect(agentOn('192.0.2.1:9988', dataDir).start()).rejects.toMatchObject({
      code: 'ERR_ADDRESS_UNAVAILABLE',
      key: 'metrics_address',
      message: expect.stringContaining('choose another metrics_address'),
    });
  });
});
