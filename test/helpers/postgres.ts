import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import {
  chmodSync,
  chownSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { freePort } from './server.js';

export interface TestPostgres {
  /** A connection string for the superuser `ironroot`, over the server's Unix socket. */
  connectionString: string;
  /** Freezes the server and its backends (SIGSTOP): connections stay open, nothing answers, as on a hung host. */
  pause(): void;
  /** Lets a paused server run again (SIGCONT). */
  resume(): void;
  /** Stops the server (fast shutdown, every connection dropped) keeping its data directory. */
  halt(): Promise<void>;
  /** Starts a halted server again on the same data directory, socket and port. */
  start(): Promise<void>;
  stop(): Promise<void>;
}

/**
 * Path of a PostgreSQL server program. Debian keeps them in /usr/lib/postgresql/<major>/bin, off the
 * PATH; take the newest major installed, else whatever the PATH has.
 */
function postgresProgram(name: 'initdb' | 'postgres'): string {
  const base = '/usr/lib/postgresql';
  const majors = existsSync(base)
    ? readdirSync(base)
        .filter((entry) => /^\d+$/.test(entry) && existsSync(join(base, entry, 'bin', name)))
        .sort((a, b) => Number(b) - Number(a))
    : [];
  return majors[0] === undefined ? name : join(base, majors[0], 'bin', name);
}

/**
 * A throw-away PostgreSQL cluster in a temporary directory, listening only on a Unix socket.
 * PostgreSQL refuses to run as root, so initdb and postgres run as the system user `postgres`.
 */
export async function startPostgres(): Promise<TestPostgres> {
  const dir = mkdtempSync(join(tmpdir(), 'ironroot-pg-'));
  const data = join(dir, 'data');
  const socketDir = join(dir, 'sock');
  mkdirSync(socketDir);
  const uid = Number(execFileSync('id', ['-u', 'postgres'], { encoding: 'utf8' }).trim());
  const gid = Number(execFileSync('id', ['-g', 'postgres'], { encoding: 'utf8' }).trim());
  chownSync(dir, uid, gid);
  chownSync(socketDir, uid, gid);
  chmodSync(dir, 0o755);
  execFileSync(postgresProgram('initdb'), ['-D', data, '-A', 'trust', '-U', 'ironroot', '--no-sync'], {
    uid,
    gid,
    stdio: 'ignore',
  });
  const port = await freePort();
  const connectionString = `postgresql://ironroot@/postgres?host=${encodeURIComponent(socketDir)}&port=${port}`;
  let server: ChildProcess | undefined;
  const launch = async () => {
    const started = spawn(
      postgresProgram('postgres'),
      ['-D', data, '-k', socketDir, '-p', String(port), '-c', 'listen_addresses=', '-c', 'fsync=on'],
      { uid, gid, stdio: 'ignore' },
    );
    server = started;
    for (let attempt = 0; ; attempt++) {
      const client = new pg.Client({ connectionString });
      try {
        await client.connect();
        await client.end();
        break;
      } catch (error) {
        await client.end().catch(() => undefined);
        if (attempt > 200 || started.exitCode !== null) throw error;
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
    }
  };
  // Backends and helpers are the postmaster's children, each in a session of its own (setsid), so
  // a process-group signal would miss them: signal the postmaster and each child by pid.
  const signalAll = (signal: NodeJS.Signals) => {
    const pid = server?.pid;
    if (pid === undefined || server?.exitCode !== null) return;
    const children = readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').split(' ').filter(Boolean);
    for (const target of [pid, ...children.map(Number)]) {
      try {
        process.kill(target, signal);
      } catch {
        // A backend that just ended.
      }
    }
  };
  const halt = async () => {
    const running = server;
    if (running === undefined || running.exitCode !== null || running.signalCode !== null) return;
    const exited = new Promise((resolve) => running.once('exit', resolve));
    signalAll('SIGCONT'); // a paused server would not act on SIGINT
    running.kill('SIGINT'); // fast shutdown
    await exited;
  };
  await launch();
  return {
    connectionString,
    pause: () => signalAll('SIGSTOP'),
    resume: () => signalAll('SIGCONT'),
    halt,
    start: launch,
    async stop() {
      await halt();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
