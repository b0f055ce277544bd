import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { chmodSync, chownSync, existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { freePort } from './server.js';

export interface TestPostgres {
  /** A connection string for the superuser `ironroot`, over the server's Unix socket. */
  connectionString: string;
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
  const server: ChildProcess = spawn(
    postgresProgram('postgres'),
    ['-D', data, '-k', socketDir, '-p', String(port), '-c', 'listen_addresses=', '-c', 'fsync=on'],
    { uid, gid, stdio: 'ignore' },
  );
  const connectionString = `postgresql://ironroot@/postgres?host=${encodeURIComponent(socketDir)}&port=${port}`;
  for (let attempt = 0; ; attempt++) {
    const client = new pg.Client({ connectionString });
    try {
      await client.connect();
      await client.end();
      break;
    } catch (error) {
      await client.end().catch(() => undefined);
      if (attempt > 200 || server.exitCode !== null) throw error;
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }
  return {
    connectionString,
    async stop() {
      if (server.exitCode === null) {
        const exited = new Promise((resolve) => server.once('exit', resolve));
        server.kill('SIGINT'); // fast shutdown
        await exited;
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
