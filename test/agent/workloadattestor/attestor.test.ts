import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  attestWorkload,
  selectorKind,
  type WorkloadAttestor,
} from '../../../src/agent/workloadattestor/attestor.js';
import { SystemdAttestor } from '../../../src/agent/workloadattestor/systemd.js';
import { UnixAttestor } from '../../../src/agent/workloadattestor/unix.js';

describe('attestWorkload', () => {
  let dir: string;
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'attest-workload-'));
    mkdirSync(join(dir, 'proc', '9'), { recursive: true });
    writeFileSync(
      join(dir, 'proc', '9', 'status'),
      'Uid:\t0\t500\t500\t500\nGid:\t0\t500\t500\t500\nGroups:\t\n',
    );
    writeFileSync(join(dir, 'proc', '9', 'cgroup'), '0::/system.slice/app.service\n');
    symlinkSync('/usr/bin/sleep', join(dir, 'proc', '9', 'exe'));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('merges the selectors of every attestor in order, without duplicates', async () => {
    const repeat: WorkloadAttestor = { type: 'test', attest: async () => ['unix:uid:500', 'test:x:1'] };
    const selectors = await attestWorkload(
      [
        new UnixAttestor({
          procRoot: join(dir, 'proc'),
          passwdPath: '/dev/null',
          groupPath: '/dev/null',
          maxHashBytes: 0,
        }),
        new SystemdAttestor({ procRoot: join(dir, 'proc'), rootDir: dir }),
        repeat,
      ],
      9,
    );
    expect(selectors).toEqual([
      'unix:uid:500',
      'unix:gid:500',
      'unix:path:/usr/bin/sleep',
      'systemd:id:app.service',
      'test:x:1',
    ]);
  });

  it('rejects when any attestor cannot tell', async () => {
    const failing: WorkloadAttestor = {
      type: 'test',
      attest: () => Promise.reject(new Error('kubelet down')),
    };
    await expect(
      attestWorkload([new SystemdAttestor({ procRoot: join(dir, 'proc') }), failing], 9),
    ).rejects.toThrow('kubelet down');
  });

  it('leaves out exactly the on-demand kinds it is told to omit, and only those', async () => {
    mkdirSync(join(dir, 'etc', 'systemd', 'system'), { recursive: true });
    writeFileSync(join(dir, 'etc', 'systemd', 'system', 'app.service'), '[Service]\n');
    const attestors = [
      new UnixAttestor({ procRoot: join(dir, 'proc'), passwdPath: '/dev/null', groupPath: '/dev/null' }),
      new SystemdAttestor({ procRoot: join(dir, 'proc'), rootDir: dir }),
    ];
    expect(attestors.flatMap((a) => a.onDemand)).toEqual(['unix:sha256', 'systemd:fragment_path']);
    const all = await attestWorkload(attestors, 9);
    expect(all.map(selectorKind)).toEqual([
      'unix:uid',
      'unix:gid',
      'unix:path',
      'unix:sha256',
      'systemd:id',
      'systemd:fragment_path',
    ]);
    expect(await attestWorkload(attestors, 9, new Set(['unix:sha256', 'systemd:fragment_path']))).toEqual([
      'unix:uid:500',
      'unix:gid:500',
      'unix:path:/usr/bin/sleep',
      'systemd:id:app.service',
    ]);
    expect(await attestWorkload(attestors, 9, new Set(['unix:sha256']))).toEqual(
      all.filter((s) => !s.startsWith('unix:sha256:')),
    );
  });

  it('names a selector kind by its type and name', () => {
    expect(selectorKind('unix:sha256:00ff')).toBe('unix:sha256');
    expect(selectorKind('k8s:pod-label:app:web')).toBe('k8s:pod-label');
    expect(selectorKind('unix:path:/usr/bin/a:b')).toBe('unix:path');
  });
});
