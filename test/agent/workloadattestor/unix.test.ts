import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import {
  copyFileSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readlinkSync,
  realpathSync,
  rmSync,
  symlinkSync,
  utimesSync,
  writeFileSync,
} from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import {
  NameFile,
  parseStatus,
  sha256OfFile,
  UnixAttestor,
} from '../../../src/agent/workloadattestor/unix.js';
import { systemUser } from '../../helpers/workload-api.js';

const sha256sum = (path: string) => execFileSync('sha256sum', [path]).toString().split(' ')[0];

describe('unix workload attestor on real processes', () => {
  let alice: { uid: number; gid: number };
  let dir: string;
  const children: ChildProcess[] = [];

  /** Starts `command` and waits until the kernel shows it running `expectExe` (after exec). */
  const start = async (
    command: string,
    args: string[],
    expectExe: string,
    options: { uid?: number; gid?: number } = {},
  ) => {
    const child = spawn(command, args, { stdio: 'ignore', ...options });
    children.push(child);
    const pid = child.pid;
    if (pid === undefined) throw new Error(`${command} did not start`);
    await expect
      .poll(() => {
        try {
          return readlinkSync(`/proc/${pid}/exe`);
        } catch {
          return '';
        }
      })
      .toBe(expectExe);
    return pid;
  };

  beforeAll(async () => {
    alice = await systemUser('ironroot-wapi-a');
    dir = mkdtempSync(join(tmpdir(), 'unix-attestor-'));
  });
  afterEach(() => {
    for (const c of children.splice(0)) c.kill('SIGKILL');
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('reports uid, user, gid, group, path and the sha256 sha256sum computes', async () => {
    const sleep = realpathSync('/usr/bin/sleep');
    const pid = await start('sleep', ['30'], sleep, { uid: alice.uid, gid: alice.gid });
    const selectors = await new UnixAttestor().attest(pid);
    expect(selectors).toContain(`unix:uid:${alice.uid}`);
    expect(selectors).toContain('unix:user:ironroot-wapi-a');
    expect(selectors).toContain(`unix:gid:${alice.gid}`);
    expect(selectors).toContain('unix:group:ironroot-wapi-a');
    expect(selectors).toContain(`unix:path:${sleep}`);
    expect(selectors).toContain(`unix:sha256:${sha256sum(sleep)}`);
  });

  it('reports supplementary groups by id and name', async () => {
    const bob = await systemUser('ironroot-wapi-b');
    const sleep = realpathSync('/usr/bin/sleep');
    const pid = await start(
      'setpriv',
      [`--reuid=${alice.uid}`, `--regid=${alice.gid}`, `--groups=${bob.gid}`, 'sleep', '30'],
      sleep,
    );
    const selectors = await new UnixAttestor().attest(pid);
    expect(selectors).toContain(`unix:supplementary_gid:${bob.gid}`);
    expect(selectors).toContain('unix:supplementary_group:ironroot-wapi-b');
  });

  it('hashes the new binary when the file at a path is replaced (cache keyed by inode and mtime)', async () => {
    const path = join(dir, 'workload');
    copyFileSync('/usr/bin/sleep', path);
    execFileSync('chmod', ['755', path]);
    const attestor = new UnixAttestor();
    const first = await start(path, ['30'], path);
    expect(await attestor.attest(first)).toContain(`unix:sha256:${sha256sum('/usr/bin/sleep')}`);
    for (const c of children.splice(0)) c.kill('SIGKILL');
    rmSync(path);
    copyFileSync(realpathSync('/usr/bin/tail'), path);
    execFileSync('chmod', ['755', path]);
    const second = await start(path, ['-f', '/dev/null'], path);
    const selectors = await attestor.attest(second);
    expect(selectors).toContain(`unix:sha256:${sha256sum(realpathSync('/usr/bin/tail'))}`);
    expect(selectors).not.toContain(`unix:sha256:${sha256sum('/usr/bin/sleep')}`);
  });

  it('reads an executable once for many concurrent attestations, and again once its mtime or inode changes', async () => {
    const path = join(dir, 'shared-workload');
    copyFileSync('/usr/bin/sleep', path);
    execFileSync('chmod', ['755', path]);
    let reads = 0;
    const attestor = new UnixAttestor({
      hashFile: (file: FileHandle) => {
        reads++;
        return sha256OfFile(file);
      },
    });
    const pids = [
      await start(path, ['30'], path),
      await start(path, ['31'], path),
      await start(path, ['32'], path),
    ];
    const expected = `unix:sha256:${sha256sum(path)}`;
    const all = await Promise.all(Array.from({ length: 60 }, (_, i) => attestor.attest(pids[i % 3] ?? 0)));
    for (const selectors of all) expect(selectors).toContain(expected);
    expect(reads).toBe(1);

    // Touched in place: same inode, new mtime (and ctime): the bytes may differ, so it is read again.
    const later = new Date(Date.now() + 60_000);
    utimesSync(path, later, later);
    const touched = await Promise.all(pids.map((pid) => attestor.attest(pid)));
    for (const selectors of touched) expect(selectors).toContain(expected);
    expect(reads).toBe(2);

    // Replaced: a new inode at the same path, run by a new process.
    rmSync(path);
    copyFileSync('/usr/bin/sleep', path);
    execFileSync('chmod', ['755', path]);
    const replaced = await start(path, ['33'], path);
    expect(await attestor.attest(replaced)).toContain(expected);
    expect(reads).toBe(3);
    await attestor.attest(replaced);
    expect(reads).toBe(3);
  });

  it('keeps the parsed passwd and group files until they change, then reads the new names', async () => {
    const passwd = join(dir, 'passwd');
    const group = join(dir, 'group');
    const without = (file: string, name: string) =>
      readFileSync(file, 'utf8')
        .split('\n')
        .filter((l) => !l.startsWith(`${name}:`))
        .join('\n');
    writeFileSync(passwd, without('/etc/passwd', 'ironroot-wapi-a'));
    writeFileSync(group, without('/etc/group', 'ironroot-wapi-a'));
    const sleep = realpathSync('/usr/bin/sleep');
    const pid = await start('sleep', ['30'], sleep, { uid: alice.uid, gid: alice.gid });
    const attestor = new UnixAttestor({ passwdPath: passwd, groupPath: group });
    const before = await attestor.attest(pid);
    expect(before).toContain(`unix:uid:${alice.uid}`);
    expect(before.some((s) => s.startsWith('unix:user:') || s.startsWith('unix:group:'))).toBe(false);
    expect(await attestor.attest(pid)).toEqual(before);

    // As useradd does it: a new file renamed over the old one (new inode).
    writeFileSync(
      `${passwd}+`,
      `${without('/etc/passwd', 'ironroot-wapi-a')}\nwapi-new:x:${alice.uid}:${alice.gid}::/:/bin/false\n`,
    );
    execFileSync('mv', [`${passwd}+`, passwd]);
    // Edited in place: same inode, new size and mtime.
    writeFileSync(group, `${without('/etc/group', 'ironroot-wapi-a')}\nwapi-grp:x:${alice.gid}:\n`);
    const after = await attestor.attest(pid);
    expect(after).toEqual([
      ...before.slice(0, 1),
      'unix:user:wapi-new',
      before[1],
      'unix:group:wapi-grp',
      ...before.slice(2),
    ]);
  });

  it('parses a name file once while it is unchanged, again after a same-size rewrite', async () => {
    const path = join(dir, 'names');
    writeFileSync(path, 'alpha:x:7001:7001::/:/bin/false\n');
    const names = new NameFile(path);
    const first = await names.names();
    expect(first.get(7001)).toBe('alpha');
    expect(await names.names()).toBe(first);
    // Same length, so only mtime and ctime tell the contents changed.
    writeFileSync(path, 'gamma:x:7001:7001::/:/bin/false\n');
    const later = new Date(Date.now() + 60_000);
    utimesSync(path, later, later);
    const second = await names.names();
    expect(second).not.toBe(first);
    expect(second.get(7001)).toBe('gamma');
    rmSync(path);
    expect((await names.names()).size).toBe(0);
  });

  it('gives no names, rather than failing, for a name file whose stat fails with other than ENOENT', async () => {
    // Two links pointing at each other: stat fails with ELOOP.
    symlinkSync(join(dir, 'loop-b'), join(dir, 'loop-a'));
    symlinkSync(join(dir, 'loop-a'), join(dir, 'loop-b'));
    expect((await new NameFile(join(dir, 'loop-a')).names()).size).toBe(0);
  });

  it('omits the hash of a binary over the size limit, keeping the other selectors', async () => {
    const sleep = realpathSync('/usr/bin/sleep');
    const pid = await start('sleep', ['30'], sleep);
    const selectors = await new UnixAttestor({ maxHashBytes: 1024 }).attest(pid);
    expect(selectors.some((s) => s.startsWith('unix:sha256:'))).toBe(false);
    expect(selectors).toContain(`unix:path:${sleep}`);
  });

  it('rejects for a process that does not exist', async () => {
    await expect(new UnixAttestor({ procRoot: dir }).attest(12345)).rejects.toThrow(/ENOENT/);
  });
});

describe('unix attestor name lookup and /proc status parsing', () => {
  it('uses the effective ids and the passwd/group files it is given', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'unix-fake-'));
    try {
      mkdirSync(join(dir, 'proc', '7'), { recursive: true });
      writeFileSync(
        join(dir, 'proc', '7', 'status'),
        'Name:\tapp\nUid:\t1000\t2001\t2001\t2001\nGid:\t1000\t3001\t3001\t3001\nGroups:\t27 3001 4002 \n',
      );
      // /proc/<pid>/exe of the fake process: a link to a real file.
      execFileSync('ln', ['-s', '/usr/bin/sleep', join(dir, 'proc', '7', 'exe')]);
      writeFileSync(join(dir, 'passwd'), 'root:x:0:0::/root:/bin/sh\napp:x:2001:3001::/srv/app:/bin/sh\n');
      writeFileSync(join(dir, 'group'), 'sudo:x:27:\napp:x:3001:\nlogs:x:4002:app\n');
      const selectors = await new UnixAttestor({
        procRoot: join(dir, 'proc'),
        passwdPath: join(dir, 'passwd'),
        groupPath: join(dir, 'group'),
      }).attest(7);
      expect(selectors).toEqual([
        'unix:uid:2001',
        'unix:user:app',
        'unix:gid:3001',
        'unix:group:app',
        'unix:supplementary_gid:27',
        'unix:supplementary_group:sudo',
        'unix:supplementary_gid:3001',
        'unix:supplementary_group:app',
        'unix:supplementary_gid:4002',
        'unix:supplementary_group:logs',
        'unix:path:/usr/bin/sleep',
        `unix:sha256:${sha256sum('/usr/bin/sleep')}`,
      ]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('refuses a status without Uid', () => {
    expect(() => parseStatus('Name:\tx\nGid:\t1\t1\t1\t1\nGroups:\t\n')).toThrow(/no Uid line/);
  });
});
