import { spawn } from 'node:child_process';
import { mkdirSync, readdirSync, readFileSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { UnixAttestor } from '../../src/agent/workloadattestor/unix.js';
import { PinnedProcess, readProcFile } from '../../src/workload-api/procfs.js';
import { WorkloadApiServer } from '../../src/workload-api/server.js';
import { openTempDir, TestCa, TestProvider } from '../helpers/workload-api.js';

/** A `sleep` child, its pid, and a way to end it and wait until the kernel has reaped it. */
async function sleeper(): Promise<{ pid: number; reap: () => Promise<void> }> {
  const child = spawn('sleep', ['60'], { stdio: 'ignore' });
  await new Promise((resolve) => child.once('spawn', resolve));
  const pid = child.pid;
  if (pid === undefined) throw new Error('sleep did not start');
  const exited = new Promise((resolve) => child.once('exit', resolve));
  return {
    pid,
    reap: async () => {
      child.kill('SIGKILL');
      await exited;
    },
  };
}

/** A /proc/<pid>/stat line as the kernel writes it, with `startTime` as field 22. */
function statLine(pid: number, comm: string, startTime: string): string {
  const fields3to21 = ['S', ...Array.from({ length: 18 }, (_, i) => String(i))];
  return `${pid} (${comm}) ${[...fields3to21, startTime, '4096', '0'].join(' ')}\n`;
}

describe('readProcFile', () => {
  it('reads a /proc file whole, as readFileSync does', () => {
    const status = readProcFile(`/proc/${process.pid}/status`);
    expect(status).toMatch(/^Name:/);
    expect(status).toContain(`\nPid:\t${process.pid}\n`);
    expect(status.endsWith('\n')).toBe(true);
  });

  it('reads files larger than its buffer without losing or repeating a byte', () => {
    const dir = openTempDir('ironroot-procfs-');
    const path = join(dir, 'large');
    // 100 000 bytes, every line numbered: a lost or repeated chunk changes the text.
    const text = Array.from({ length: 10_000 }, (_, i) => String(i).padStart(9, '0')).join('\n');
    writeFileSync(path, text);
    expect(readProcFile(path)).toBe(text);
    // A /proc file that stays the same between two reads (status does not: its counters move).
    expect(readProcFile(`/proc/${process.pid}/cmdline`)).toBe(
      readFileSync(`/proc/${process.pid}/cmdline`, 'utf8'),
    );
  });

  it('throws the open error for a process that is not there', () => {
    expect(() => readProcFile('/proc/0/status')).toThrow(/ENOENT/);
  });
});

describe('PinnedProcess', () => {
  it('holds a live process with its start time until that process is gone', async () => {
    const child = await sleeper();
    const pinned = PinnedProcess.open('/proc', child.pid);
    expect(pinned).toBeDefined();
    const stat = readFileSync(`/proc/${child.pid}/stat`, 'utf8');
    expect(pinned?.startTime).toBe(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19]);
    expect(pinned?.isSame()).toBe(true);
    await child.reap();
    expect(pinned?.isSame()).toBe(false);
    pinned?.close();
  });

  it('answers false once closed, and closing twice is harmless', async () => {
    const child = await sleeper();
    try {
      const pinned = PinnedProcess.open('/proc', child.pid);
      pinned?.close();
      pinned?.close();
      expect(pinned?.isSame()).toBe(false);
    } finally {
      await child.reap();
    }
  });

  it('pins nothing for a pid with no process', async () => {
    const child = await sleeper();
    await child.reap();
    expect(PinnedProcess.open('/proc', child.pid)).toBeUndefined();
  });

  it('compares the start time too, where /proc is not the kernel’s (a stat file rewritten in place)', () => {
    const root = openTempDir('ironroot-procfs-root-');
    mkdirSync(join(root, '42'));
    const path = join(root, '42', 'stat');
    // A comm with spaces and ')' must not shift the fields.
    writeFileSync(path, statLine(42, 'a) b (c', '1234'));
    const pinned = PinnedProcess.open(root, 42);
    expect(pinned?.startTime).toBe('1234');
    expect(pinned?.isSame()).toBe(true);
    writeFileSync(path, statLine(42, 'other', '5678'));
    expect(pinned?.isSame()).toBe(false);
    pinned?.close();
  });

  it('pins nothing when the stat file has no start time', () => {
    const root = openTempDir('ironroot-procfs-short-');
    mkdirSync(join(root, '7'));
    writeFileSync(join(root, '7', 'stat'), '7 (short) S 1 2 3\n');
    expect(PinnedProcess.open(root, 7)).toBeUndefined();
  });
});

describe('the Workload API server and its pins', () => {
  /** This process's descriptors open on its own /proc/<pid>/stat: the pins of connections it made. */
  const ownPins = () =>
    readdirSync('/proc/self/fd').filter((fd) => {
      try {
        return readlinkSync(`/proc/self/fd/${fd}`) === `/proc/${process.pid}/stat`;
      } catch {
        return false;
      }
    }).length;

  it('holds one pin per open connection and lets each go when its connection closes', async () => {
    const dir = openTempDir('ironroot-procfs-server-');
    const provider = new TestProvider(await TestCa.create('example.org'), new UnixAttestor());
    const server = await WorkloadApiServer.listen({ provider, socketPath: join(dir, 'agent.sock') });
    try {
      // Plain connections: the server pins at accept, before any HTTP/2.
      const sockets = await Promise.all(
        Array.from(
          { length: 5 },
          () =>
            new Promise<Socket>((resolve, reject) => {
              const socket = connect(server.socketPath, () => resolve(socket));
              socket.once('error', reject);
            }),
        ),
      );
      await expect.poll(ownPins).toBe(5);
      for (const socket of sockets) socket.destroy();
      await expect.poll(ownPins).toBe(0);
    } finally {
      await server.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
