// A throw-away PostgreSQL cluster for benchmarks: initdb in a new temporary directory, listening
// only on a Unix socket there, trust authentication, durable commits (fsync on, as in production).
// PostgreSQL refuses to run as root, so initdb and postgres run as the system user `postgres`.
// Lives apart from scripts/bench-*.mjs so `npm run bench` does not run it as a benchmark.
import { execFileSync, spawn } from 'node:child_process';
import { chmodSync, chownSync, existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

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
 * Starts the cluster and creates `database`; resolves to its connection string (user `ironroot`)
 * and `stop()`, which shuts the cluster down and removes its directory.
 */
export async function startBenchPostgres(database) {
  const { default: pg } = await import('pg');
  const dir = mkdtempSync(join(tmpdir(), 'ironroot-bench-pg-'));
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
  const server = spawn(
    program('postgres'),
    ['-D', data, '-k', socketDir, '-p', String(port), '-c', 'listen_addresses=', '-c', 'fsync=on'],
    { uid, gid, stdio: 'ignore' },
  );
  const at = (db) => `postgresql://ironroot@/${db}?host=${encodeURIComponent(socketDir)}&port=${port}`;
  for (let attempt = 0; ; attempt++) {
    const client = new pg.Client({ connectionString: at('postgres') });
    try {
      await client.connect();
      await client.query(`CREATE DATABASE ${database}`);
      await client.end();
      break;
    } catch (error) {
      await client.end().catch(() => undefined);
      if (attempt > 200 || server.exitCode !== null) throw error;
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }
  return {
    connectionString: at(database),
    async stop() {
      if (server.exitCode === null && server.signalCode === null) {
        const exited = new Promise((resolve) => server.once('exit', resolve));
        server.kill('SIGINT'); // fast shutdown
        await exited;
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
