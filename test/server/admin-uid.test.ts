import { execFileSync } from 'node:child_process';
import { chmodSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { systemClock } from '../../src/server/clock.js';
import { openSqliteDatastore } from '../../src/server/datastore/index.js';
import { cli, startTestServer, type TestServer } from '../helpers/server.js';

const USER = 'ironroot-test';

/** uid of a local test user, created if missing (these tests run as root, like the server). */
function testUid(): number {
  if (process.getuid?.() !== 0)
    throw new Error('admin socket uid tests must run as root (they create a user)');
  try {
    return Number(
      execFileSync('id', ['-u', USER], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim(),
    );
  } catch {
    execFileSync('useradd', ['--system', '--no-create-home', '--shell', '/usr/sbin/nologin', USER]);
    return Number(
      execFileSync('id', ['-u', USER], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim(),
    );
  }
}

describe.each([
  ['not allowed', false],
  ['allowed', true],
])('a caller whose uid is %s', (_label, allowed) => {
  let server: TestServer;
  let uid: number;

  beforeAll(async () => {
    uid = testUid();
    server = await startTestServer({ admin_allowed_uids: allowed ? [0, uid] : [0] });
    // The caller runs with gid 0, so the socket's group permission (0770, root group) lets it
    // connect: what refuses it is then the server's uid check alone, not file permissions.
    chmodSync(server.dir, 0o750);
  });
  afterAll(async () => {
    await server.stop();
  });

  const asTestUser = (args: string[]) => cli(args, { uid, gid: 0 });

  if (!allowed) {
    it('is refused with PERMISSION_DENIED before any handler runs, and logged with one pid and the caller as peer_uid, peer_pid', async () => {
      const result = await asTestUser([
        'entry',
        'create',
        '--admin-socket',
        server.socket,
        '--spiffe-id',
        'spiffe://example.org/denied',
        '--parent-id',
        'spiffe://example.org/agent/a',
        '--selector',
        'unix:uid:1',
      ]);
      expect(result.code).toBe(1);
      expect(result.stderr).toBe(
        `Error (ERR_PERMISSION_DENIED): uid ${uid} may not use the admin API; ask an operator to add it to admin_allowed_uids in the server config\n`,
      );
      const count = await cli(['entry', 'count', '--admin-socket', server.socket, '--output', 'json']);
      expect(JSON.parse(count.stdout)).toEqual({ count: 0 });
      const denial = server
        .log()
        .split('\n')
        .find((line) => line.includes('admin API caller refused'));
      if (denial === undefined) throw new Error('no denial logged');
      // One pid (the server's, from the logger), the caller's as peer_pid: JSON.parse would keep only
      // the last of two `pid` keys, so count them in the raw line.
      expect(denial.match(/"pid":/g)).toHaveLength(1);
      const fields = JSON.parse(denial) as Record<string, unknown>;
      expect(fields).toMatchObject({ peer_uid: uid, result: 'denied' });
      expect(typeof fields.peer_pid).toBe('number');
      expect(fields.peer_pid).not.toBe(fields.pid);
      expect(fields).not.toHaveProperty('uid');
    });
  } else {
    it('may create an entry, and the audit log names its uid', async () => {
      const result = await asTestUser([
        'entry',
        'create',
        '--admin-socket',
        server.socket,
        '--spiffe-id',
        'spiffe://example.org/allowed',
        '--parent-id',
        'spiffe://example.org/agent/a',
        '--selector',
        'unix:uid:1',
      ]);
      expect(result.stderr).toBe('');
      expect(result.code).toBe(0);
      const { datastore } = await openSqliteDatastore(server.dataDir, systemClock);
      try {
        const [last] = await datastore.listAudit(1);
        expect(last).toMatchObject({ action: 'entry.create', actor: `uid:${uid}` });
      } finally {
        await datastore.close();
      }
    });
  }
});
