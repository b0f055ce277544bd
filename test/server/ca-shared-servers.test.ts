/**
 * Two real server processes on one PostgreSQL database and one SoftHSM2 token (docs/operations.md,
 * "Several servers", "Who rotates the CA"): one CA between them, changed through either admin socket,
 * and picked up by the other, also after the server that made the change was killed.
 */
import { X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { assertBuilt } from '../helpers/dist.js';
import { startPostgres, type TestPostgres } from '../helpers/postgres.js';
import { type CliResult, cli, startTestServer, type TestServer } from '../helpers/server.js';
import { createSoftHsm, type SoftHsm } from '../helpers/softhsm.js';

const TD = 'spiffe://example.org';

let postgres: TestPostgres;
let softhsm: SoftHsm;
let url: string;
let one: TestServer;
let two: TestServer;

beforeAll(async () => {
  assertBuilt();
  postgres = await startPostgres();
  softhsm = await createSoftHsm('shared-servers');
  url = await postgres.createDatabase('ironroot_shared');
  const config = {
    key_manager: softhsm.uri(),
    datastore: { type: 'postgres', connection_string: url, tls: { mode: 'disable' } },
  };
  // Started together on the empty database.
  [one, two] = await Promise.all([startTestServer(config), startTestServer(config)]);
});

afterAll(async () => {
  await one?.stop();
  await two?.stop();
  await postgres?.stop();
  await softhsm?.cleanup();
});

const ok = (result: CliResult): string => {
  expect(result.stderr).toBe('');
  expect(result.code).toBe(0);
  return result.stdout;
};
const admin = (server: TestServer) => ['--admin-socket', server.socket];

interface Authority {
  authority_id: string;
  state: string;
  certificate_pem: string;
}
const authorities = async (server: TestServer, kind: 'x509' | 'jwt') =>
  (
    JSON.parse(ok(await cli(['localauthority', kind, 'show', ...admin(server), '--output', 'json']))) as {
      authorities: Authority[];
    }
  ).authorities;
const inState = async (server: TestServer, kind: 'x509' | 'jwt', state: string) => {
  const found = (await authorities(server, kind)).find((a) => a.state === state);
  if (found === undefined) throw new Error(`no ${state} ${kind} authority`);
  return found;
};

async function query<T extends pg.QueryResultRow>(text: string, values: unknown[]): Promise<T[]> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    return (await client.query<T>(text, values)).rows;
  } finally {
    await client.end();
  }
}

const audited = async (action: string) =>
  Number(
    (await query<{ n: string }>('SELECT count(*) AS n FROM audit_log WHERE action = $1', [action]))[0]?.n,
  );

/** The CA certificate that issued an X.509-SVID minted through `server`'s admin socket. */
async function mintedIssuer(server: TestServer, name: string, cas: readonly Authority[]): Promise<string> {
  const dir = join(server.dir, name);
  ok(await cli(['x509', 'mint', ...admin(server), '--spiffe-id', `${TD}/${name}`, '--write', dir]));
  const leaf = new X509Certificate(readFileSync(join(dir, 'svid.pem')));
  const issuer = cas.find((ca) => {
    const certificate = new X509Certificate(ca.certificate_pem);
    return leaf.checkIssued(certificate) && leaf.verify(certificate.publicKey);
  });
  return issuer?.authority_id ?? 'none of them';
}

describe('two server processes sharing PostgreSQL and a SoftHSM2 token', () => {
  it('creates one CA between them at a shared first start, and both serve its bundle', async () => {
    expect(await audited('ca.x509.init')).toBe(1);
    expect(await audited('ca.jwt.init')).toBe(1);
    const bundle = ok(await cli(['bundle', 'show', ...admin(one), '--format', 'spiffe']));
    expect(ok(await cli(['bundle', 'show', ...admin(two), '--format', 'spiffe']))).toBe(bundle);
    expect((await authorities(two, 'x509')).map((a) => a.authority_id)).toEqual(
      (await authorities(one, 'x509')).map((a) => a.authority_id),
    );
  });

  it('shows on one server the key prepared through the other, and after the preparer was killed, activates it there and signs with it', async () => {
    const prepared = JSON.parse(
      ok(await cli(['localauthority', 'x509', 'prepare', ...admin(one), '--output', 'json'])),
    ) as Authority;
    expect((await inState(two, 'x509', 'prepared')).authority_id).toBe(prepared.authority_id);
    const pem = ok(await cli(['bundle', 'show', ...admin(two), '--format', 'pem']));
    expect(pem).toContain(prepared.certificate_pem.trim());

    await one.kill9();
    const activated = JSON.parse(
      ok(await cli(['localauthority', 'x509', 'activate', ...admin(two), '--output', 'json'])),
    ) as Authority;
    expect(activated.authority_id).toBe(prepared.authority_id);
    const cas = await authorities(two, 'x509');
    expect(await mintedIssuer(two, 'after-kill', cas)).toBe(prepared.authority_id);
    expect(await audited('ca.x509.activate')).toBe(1);
  });

  it('the restarted server resumes the CA the other changed, and signs with the keys activated there', async () => {
    await one.restart();
    const active = await inState(one, 'x509', 'active');
    expect(active.authority_id).toBe((await inState(two, 'x509', 'active')).authority_id);
    expect(await mintedIssuer(one, 'after-restart', await authorities(one, 'x509'))).toBe(
      active.authority_id,
    );
    // A JWT key activated through the other server: this one signs with it from its next check
    // of the journal (before signing, at most once a second).
    ok(await cli(['localauthority', 'jwt', 'prepare', ...admin(two)]));
    const jwtKey = (
      JSON.parse(
        ok(await cli(['localauthority', 'jwt', 'activate', ...admin(two), '--output', 'json'])),
      ) as Authority
    ).authority_id;
    let kid = '';
    while (kid !== jwtKey) {
      const token = ok(
        await cli(['jwt', 'mint', ...admin(one), '--spiffe-id', `${TD}/w`, '--audience', 'x']),
      ).trim();
      kid = JSON.parse(Buffer.from(token.split('.')[0] ?? '', 'base64url').toString('utf8')).kid;
      expect([jwtKey, ...(await authorities(two, 'jwt')).map((a) => a.authority_id)]).toContain(kid);
    }
    expect(await inState(one, 'jwt', 'active')).toMatchObject({ authority_id: jwtKey });
    // Every key on the token is one the journal names: nothing was generated twice.
    const listed = JSON.parse(
      ok(await cli(['hsm', 'keys', 'list', '--config', two.configFile, '--output', 'json'])),
    ) as { id: string; usage: string }[];
    expect(listed.length).toBeGreaterThan(0);
    expect(listed.filter((k) => k.usage !== 'in use')).toEqual([]);
  });

  it('refuses a command while a server killed mid-change still holds the lease, naming it, and runs it once the lease ran out', async () => {
    // The row a server killed while preparing leaves behind (its lease renewed a moment before).
    await query('INSERT INTO ca_lease (name, holder, expires_at_ms) VALUES ($1, $2, $3)', [
      'ca-rotation',
      'ca-9 pid 4242 (dead00)',
      Date.now() + 3000,
    ]);
    const refused = await cli(['localauthority', 'x509', 'prepare', ...admin(one)]);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(
      /^Error \(ERR_CA_LEASE_HELD\): the CA is being changed by ca-9 pid 4242 \(dead00\) \(it holds the rotation lease until \S+Z\)/,
    );
    expect(await audited('ca.x509.prepare')).toBe(1);
    // Polled until the lease's time is up; bounded by the test timeout.
    let result = refused;
    while (result.code !== 0) {
      expect(result.stderr).toContain('holds the rotation lease');
      await new Promise((resolve) => setTimeout(resolve, 500));
      result = await cli(['localauthority', 'x509', 'prepare', ...admin(one)]);
    }
    expect(await audited('ca.x509.prepare')).toBe(2);
    expect(await query('SELECT holder FROM ca_lease', [])).toEqual([]);
  });
});
