import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SystemdAttestor } from '../../../src/agent/workloadattestor/systemd.js';

/** cgroup files as real hosts write them, by fake pid. */
const CGROUPS: Record<number, string> = {
  // cgroup v2 (unified).
  201: '0::/system.slice/nginx.service\n',
  // cgroup v1 with systemd's named hierarchy.
  202: [
    '12:pids:/system.slice/sshd.service',
    '4:memory:/system.slice/sshd.service',
    '1:name=systemd:/system.slice/sshd.service',
    '',
  ].join('\n'),
  // A template instance inside a sub-slice.
  203: '0::/system.slice/system-getty.slice/getty@tty1.service\n',
  // A user's app in a transient scope under the user manager.
  204: '0::/user.slice/user-1000.slice/user@1000.service/app.slice/app-org.example.editor-4242.scope\n',
  // A process in a sub-cgroup its service created (delegation).
  205: '0::/system.slice/containerd.service/workers\n',
  // The root cgroup: no unit.
  206: '0::/\n',
  // A user moved into a sub-cgroup of their delegated subtree named like a system service.
  207: '0::/user.slice/user-1000.slice/user@1000.service/app.slice/sshd.service\n',
  // A cgroupfs path that is no systemd unit (a container runtime's own hierarchy).
  208: '1:name=systemd:/docker/93d1c2b4a5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f80\n',
};

describe('systemd workload attestor on a fake /proc and unit tree', () => {
  let dir: string;
  let attestor: SystemdAttestor;

  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'systemd-attestor-'));
    for (const [pid, text] of Object.entries(CGROUPS)) {
      mkdirSync(join(dir, 'proc', pid), { recursive: true });
      writeFileSync(join(dir, 'proc', pid, 'cgroup'), text);
    }
    for (const unit of [
      '/usr/lib/systemd/system/nginx.service',
      '/usr/lib/systemd/system/sshd.service',
      // An administrator's copy overrides the vendor file.
      '/etc/systemd/system/sshd.service',
      '/usr/lib/systemd/system/getty@.service',
      '/lib/systemd/system/containerd.service',
      '/usr/lib/systemd/system/user@.service',
    ]) {
      mkdirSync(join(dir, 'root', dirname(unit)), { recursive: true });
      writeFileSync(join(dir, 'root', unit), '[Service]\nExecStart=/bin/true\n');
    }
    attestor = new SystemdAttestor({ procRoot: join(dir, 'proc'), rootDir: join(dir, 'root') });
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('names the unit and its vendor unit file under cgroup v2', async () => {
    expect(await attestor.attest(201)).toEqual([
      'systemd:id:nginx.service',
      'systemd:fragment_path:/usr/lib/systemd/system/nginx.service',
    ]);
  });

  it('reads the systemd hierarchy under cgroup v1 and prefers /etc over /usr/lib', async () => {
    expect(await attestor.attest(202)).toEqual([
      'systemd:id:sshd.service',
      'systemd:fragment_path:/etc/systemd/system/sshd.service',
    ]);
  });

  it('finds the template file of an instance', async () => {
    expect(await attestor.attest(203)).toEqual([
      'systemd:id:getty@tty1.service',
      'systemd:fragment_path:/usr/lib/systemd/system/getty@.service',
    ]);
  });

  it('attributes a user session process to the user manager, whatever its sub-cgroup is called', async () => {
    const userManager = [
      'systemd:id:user@1000.service',
      'systemd:fragment_path:/usr/lib/systemd/system/user@.service',
    ];
    expect(await attestor.attest(204)).toEqual(userManager);
    expect(await attestor.attest(207)).toEqual(userManager);
  });

  it('gives a transient scope its id but no fragment path', async () => {
    mkdirSync(join(dir, 'proc', '209'), { recursive: true });
    writeFileSync(join(dir, 'proc', '209', 'cgroup'), '0::/system.slice/run-u42.scope\n');
    expect(await attestor.attest(209)).toEqual(['systemd:id:run-u42.scope']);
  });

  it('attributes a delegated sub-cgroup to its service', async () => {
    expect(await attestor.attest(205)).toEqual([
      'systemd:id:containerd.service',
      'systemd:fragment_path:/lib/systemd/system/containerd.service',
    ]);
  });

  it('gives no selectors to a process in no unit', async () => {
    expect(await attestor.attest(206)).toEqual([]);
    expect(await attestor.attest(208)).toEqual([]);
  });

  it('rejects when the process is gone', async () => {
    await expect(attestor.attest(299)).rejects.toThrow(/ENOENT/);
  });
});
