/**
 * A real server process on a real PostgreSQL named in its config: start-up, `validate`,
 * `hsm keys list --config`, and readiness through a database outage (frozen, then restarted).
 */
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { runServerCli } from '../helpers/cli.js';
import { assertBuilt } from '../helpers/dist.js';
import { startPostgres, type TestPostgres } from '../helpers/postgres.js';
import { startTestServer, type TestServer } from '../helpers/server.js';
import { createSoftHsm, type SoftHsm } from '../helpers/softhsm.js';

let postgres: TestPostgres;
let softhsm: SoftHsm;
let server: TestServer;
let dir: string;
let uriFile: string;

/** The database's URI with a password that trust authentication ignores: only its hiding is tested. */
const PASSWORD = 'hunter2-never-logged';

beforeAll(async () => {
  assertBuilt();
  postgres = await startPostgres();
  softhsm = await createSoftHsm('pgconfig');
  dir = mkdtempSync(join(tmpdir(), 'ironroot-pgconfig-'));
  uriFile = join(dir, 'pg.uri');
  const url = (await postgres.createDatabase('ironroot_a')).replace('ironroot@', `ironroot:${PASSWORD}@`);
  writeFileSync(uriFile, `${url}\n`, { mode: 0o600 });
  server = await startTestServer({ key_manager: softhsm.uri(), datastore: datastore() });
});

afterAll(async () => {
  await server?.stop();
  await postgres?.stop();
  await softhsm?.cleanup();
});

const datastore = () => ({ type: 'postgres', connection_string_file: uriFile, tls: { mode: 'disable' } });

const cli = (...args: string[]) => runServerCli(args, softhsm.env);

async function ready(): Promise<{ status: number; body: { ready: boolean; reason?: string } }> {
  const response = await fetch(`http://127.0.0.1:${server.healthPort}/ready`);
  return { status: response.status, body: (await response.json()) as { ready: boolean; reason?: string } };
}

/** Polls /ready until it answers `status`; bounded by the test timeout, not by a clock here. */
async function readyBecomes(status: number): Promise<{ ready: boolean; reason?: string }> {
  for (;;) {
    const answer = await ready();
    if (answer.status === status) return answer.body;
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
}

describe('server on PostgreSQL from its config', () => {
  it('starts on the database a 0600 file names, migrating it, and never logs the password', async () => {
    expect(server.log()).toContain('datastore migrated');
    expect(server.log()).toContain(`ironroot:REDACTED@`);
    expect(server.log()).not.toContain(PASSWORD);
    expect((await ready()).status).toBe(200);
  });

  it('validate reaches the database and checks its trust domain, naming it without the password', async () => {
    const base = { key_manager: softhsm.uri(), development: true, datastore: datastore() };
    const write = (name: string, extra: Record<string, unknown>) => {
      const file = join(dir, `${name}.yaml`);
      writeFileSync(
        file,
        stringify({
          data_dir: join(dir, name, 'data'),
          admin_socket: join(dir, name, 'run', 'admin.sock'),
          ...base,
          ...extra,
        }),
      );
      return file;
    };
    // Another server's config (its own data_dir) on the same database: valid while the first runs.
    const second = await cli('validate', '--config', write('second', { trust_domain: 'example.org' }));
    expect(second).toMatchObject({ code: 0 });
    const other = await cli('validate', '--config', write('other', { trust_domain: 'example.com' }));
    expect(other.code).toBe(1);
    expect(other.stderr).toContain(
      `datastore the URI in ${uriFile} belongs to trust domain example.org (its CA and bundle were made for it), not example.com`,
    );
    expect(other.stderr).toContain('give example.com a new, empty database');
    const unreachable = write('unreachable', {
      trust_domain: 'example.org',
      datastore: {
        type: 'postgres',
        connection_string: `postgresql://ironroot:${PASSWORD}@/nosuchdb?host=${encodeURIComponent(dir)}&port=1`,
        tls: { mode: 'disable' },
      },
    });
    const refused = await cli('validate', '--config', unreachable, '--output', 'json');
    expect(refused.code).toBe(1);
    expect(JSON.parse(refused.stdout)).toMatchObject({ valid: false, code: 'ERR_DATASTORE' });
    expect(refused.stdout).toContain(
      'cannot read PostgreSQL datastore postgresql://ironroot:REDACTED@/nosuchdb',
    );
    expect(refused.stdout).not.toContain(PASSWORD);
  });

  it('hsm keys list --config marks the CA keys the PostgreSQL journal names as in use', async () => {
    const list = await cli('hsm', 'keys', 'list', '--config', server.configFile, '--output', 'json');
    expect(list.stderr).toBe('');
    const keys = JSON.parse(list.stdout) as { id: string; usage: string }[];
    expect(keys.length).toBeGreaterThan(0);
    expect(keys.map((k) => k.usage)).toEqual(keys.map(() => 'in use'));
  });

  it('reports not ready with a reason while PostgreSQL is frozen or down, and ready once it is back', async () => {
    postgres.pause();
    try {
      const frozen = await readyBecomes(503);
      expect(frozen.reason).toMatch(/PostgreSQL did not answer|timeout/i);
    } finally {
      postgres.resume();
    }
    await readyBecomes(200);

    await postgres.halt();
    const down = await readyBecomes(503);
    expect(down).toMatchObject({ ready: false });
    expect(down.reason).not.toBe('');
    await postgres.start();
    // The pool dropped the connections the restart broke and opens new ones.
    expect(await readyBecomes(200)).toEqual({ ready: true });
    expect(server.log()).toContain('a PostgreSQL connection broke; the next query opens a new one');
  });
});
