// A throw-away PostgreSQL cluster for tests and benchmarks: initdb in a new temporary directory,
// listening only on a Unix socket there, trust authentication, durable commits (fsync on, as in
// production). PostgreSQL refuses to run as root, so initdb and postgres run as the system user
// `postgres`. Lives in scripts/lib so that the benchmarks (plain ESM) and test/helpers/postgres.ts
// share one implementation; not named bench-*.mjs, so `npm run bench` does not run it.
import { execFileSync, spawn } from 'node:child_process';
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
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';

/** Debian keeps the server programs in /usr/lib/postgresql/<major>/bin, off the PATH: the newest. */
function program(name) {
  const base = '/usr/lib/postgresql';
  const majors = existsSync(base)
    ? readdirSync(base)
        .filter((entry) => /^\d+$/.test(entry) && existsSync(join(base, entry, 'bin', name)))
        .sort((a, b) => Number(b) - Number(a))
    : [];
  return majors[0] === undefined ? name : join(base, majors[0], 'bin', name);
}

function freePort() {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close((error) => (error ? reject(error) : resolve(port)));
    });
  });
}

/**
 * Starts a cluster; with `options.database`, creates that database and the connection string names
 * it (else the `postgres` database). See postgres-cluster.d.mts for what the result offers.
 */
export async function startPostgres(options = {}) {
  const dir = mkdtempSync(join(tmpdir(), 'ironroot-pg-'));
  const data = join(dir, 'data');
  const socketDir = join(dir, 'sock');
  mkdirSync(socketDir);
  const uid = Number(execFileSync('id', ['-u', 'postgres'], { encoding: 'utf8' }).trim());
  const gid = Number(execFileSync('id', ['-g', 'postgres'], { encoding: 'utf8' }).trim());
  chownSync(dir, uid, gid);
  chownSync(socketDir, uid, gid);
  chmodSync(dir, 0o755);
  execFileSync(program('initdb'), ['-D', data, '-A', 'trust', '-U', 'ironroot', '--no-sync'], {
    uid,
    gid,
    stdio: 'ignore',
  });
  const port = await freePort();
  const at = (db) => `postgresql://ironroot@/${db}?host=${encodeURIComponent(socketDir)}&port=${port}`;
  let server;
  const launch = async () => {
    const started = spawn(
      program('postgres'),
      ['-D', data, '-k', socketDir, '-p', String(port), '-c', 'listen_addresses=', '-c', 'fsync=on'],
      { uid, gid, stdio: 'ignore' },
    );
    server = started;
    for (let attempt = 0; ; attempt++) {
      const client = new pg.Client({ connectionString: at('postgres') });
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
  const signalAll = (signal) => {
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
  const stop = async () => {
    await halt();
    rmSync(dir, { recursive: true, force: true });
  };
  const createDatabase = async (name) => {
    const client = new pg.Client({ connectionString: at('postgres') });
    await client.connect();
    try {
      await client.query(`CREATE DATABASE ${name}`);
    } finally {
      await client.end();
    }
    return at(name);
  };
  try {
    await launch();
    if (options.database !== undefined) await createDatabase(options.database);
  } catch (error) {
    await stop();
    throw error;
  }
  return {
    connectionString: at(options.database ?? 'postgres'),
    pause: () => signalAll('SIGSTOP'),
    resume: () => signalAll('SIGCONT'),
    halt,
    start: launch,
    stop,
    createDatabase,
  };
}
