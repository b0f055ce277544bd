import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
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
