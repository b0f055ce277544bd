import { lstatSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildServerProgram } from '../../src/server/cli/main.js';
import { systemClock } from '../../src/server/clock.js';
import { openSqliteDatastore } from '../../src/server/datastore/index.js';
import { leafHelps, OUTPUT_HELP } from '../helpers/cli.js';
import { type CliResult, cli, startTestServer, type TestServer } from '../helpers/server.js';

const TD = 'spiffe://example.org';
const DAY = 86_400;

/** The commands that print no data: they run a daemon or only act. */
const SERVER_NOT_DATA = ['run', 'hsm keys destroy'];

describe('ironroot-server output flags', { timeout: 180_000 }, () => {
  it('every data command offers --output text|json, and none shows the deprecated --json', () => {
    const leaves = leafHelps(buildServerProgram());
    expect(leaves.map(([command]) => command)).toEqual(
      expect.arrayContaining(['agent count', 'agent purge', 'bundle count', 'profile check', 'jwt mint']),
    );
    for (const [command, help] of leaves) {
      expect(help, command).not.toMatch(/--json\b/);
      if (!SERVER_NOT_DATA.includes(command)) expect(help, command).toContain(OUTPUT_HELP);
    }
  });

  it('refuses an --output value other than text, json or pretty, naming it', async () => {
    const result = await cli(['entry', 'count', '--admin-socket', '/nonexistent.sock', '--output', 'yaml']);
    expect(result.code).toBe(1);
    expect(result.stderr).toContain(
      "option '--output <format>' argument 'yaml' is invalid. allowed: text, json (or pretty, the same as text)",
    );
  });

  it('profile check takes --output json, and the old --json still works', async () => {
    const dir = join(__dirname, '../fixtures/eventlogs/ovmf');
    const profile = await cli(['profile', 'learn', '--eventlog', eventlog(dir), '--name', 'golden']);
    expect(profile.code).toBe(0);
    const file = join(server.dir, 'golden.yaml');
    writeFileSync(file, profile.stdout);
    const args = ['profile', 'check', '--profile', file, '--eventlog', eventlog(dir)];
    const viaOutput = await cli([...args, '--output', 'json']);
    const viaJson = await cli([...args, '--json']);
    expect(JSON.parse(viaOutput.stdout)).toEqual({ profile: 'golden', fits: true, violations: [] });
    expect(JSON.parse(viaJson.stdout)).toEqual(JSON.parse(viaOutput.stdout));
    expect((await cli([...args, '--output', 'text'])).stdout).toBe(`${eventlog(dir)} fits profile golden\n`);
  });

  let server: TestServer;
  const admin = () => ['--admin-socket', server.socket];
  const ok = (result: CliResult): string => {
    expect(result.stderr).toBe('');
    expect(result.code).toBe(0);
    return result.stdout;
  };

  beforeAll(async () => {
    server = await startTestServer();
  });
  afterAll(async () => {
    await server.stop();
  });

  it('accepts pretty (SPIRE) for text and the hidden --json for json on admin commands', async () => {
    expect(ok(await cli(['entry', 'count', ...admin(), '--output', 'pretty']))).toBe(
      '0 registration entries\n',
    );
    expect(ok(await cli(['entry', 'count', ...admin(), '--output', 'text']))).toBe(
      '0 registration entries\n',
    );
    expect(JSON.parse(ok(await cli(['entry', 'count', ...admin(), '--json'])))).toEqual({ count: 0 });
    const validated = await cli(['validate', '--config', server.configFile, '--output', 'pretty']);
    expect(validated.stdout).not.toContain('{');
  });

  it('bundle set, list, count and delete take --id as spiffe://td or td', async () => {
    const pemFile = join(server.dir, 'partner.pem');
    writeFileSync(pemFile, ok(await cli(['bundle', 'show', ...admin(), '--format', 'pem'])));
    expect(JSON.parse(ok(await cli(['bundle', 'count', ...admin(), '--output', 'json'])))).toEqual({
      count: 0,
    });
    expect(
      ok(await cli(['bundle', 'set', ...admin(), '--id', 'spiffe://partner.org', '--path', pemFile])),
    ).toBe('Bundle for partner.org set (sequence 1).\n');
    expect(ok(await cli(['bundle', 'set', ...admin(), '--id', 'other.org', '--path', pemFile]))).toBe(
      'Bundle for other.org set (sequence 1).\n',
    );
    expect(JSON.parse(ok(await cli(['bundle', 'count', ...admin(), '--output', 'json'])))).toEqual({
      count: 2,
    });
    expect(ok(await cli(['bundle', 'count', ...admin()]))).toBe('2 federated bundles\n');
    const one = JSON.parse(
      ok(await cli(['bundle', 'list', ...admin(), '--id', 'spiffe://partner.org', '--output', 'json'])),
    ) as { bundles: { trust_domain: string }[] };
    expect(one.bundles.map((b) => b.trust_domain)).toEqual(['partner.org']);
    expect(ok(await cli(['bundle', 'delete', ...admin(), '--id', 'spiffe://partner.org']))).toBe(
      'Bundle for partner.org deleted.\n',
    );
    expect(ok(await cli(['bundle', 'delete', ...admin(), '--id', 'other.org']))).toBe(
      'Bundle for other.org deleted.\n',
    );
    expect(ok(await cli(['bundle', 'count', ...admin()]))).toBe('0 federated bundles\n');
  });

  it.each([
    ['spiffe://partner.org/workload', 'a SPIFFE ID with a path is not a trust domain'],
    ['Partner.org', 'ERR_TRUSTDOMAIN'],
    ['https://partner.org', 'ERR_SPIFFEID'],
  ])('bundle set and delete refuse --id %s with ERR_CLI_TRUST_DOMAIN naming it', async (id, why) => {
    for (const command of [['set', '--path', '/dev/null'], ['delete']]) {
      const result = await cli(['bundle', ...command, ...admin(), '--id', id]);
      expect(result.code).toBe(1);
      expect(result.stderr).toContain(`Error (ERR_CLI_TRUST_DOMAIN): --id ${JSON.stringify(id)}: `);
      expect(result.stderr).toContain(why);
    }
  });

  it('jwt mint --write puts the token in a 0600 file, replacing a file or symlink there', async () => {
    const file = join(server.dir, 'token.jwt');
    const target = join(server.dir, 'not-to-be-written');
    writeFileSync(target, 'keep', { mode: 0o644 });
    symlinkSync(target, file);
    const mint = ['jwt', 'mint', ...admin(), '--spiffe-id', `${TD}/w`, '--audience', 'a'];
    expect(ok(await cli([...mint, '--write', file]))).toBe(`JWT-SVID written to ${file}\n`);
    expect(lstatSync(file).isFile()).toBe(true);
    expect(lstatSync(file).mode & 0o777).toBe(0o600);
    expect(readFileSync(target, 'utf8')).toBe('keep');
    const first = readFileSync(file, 'utf8').trim();
    expect(first.split('.')).toHaveLength(3);
    const written = JSON.parse(ok(await cli([...mint, '--write', file, '--output', 'json']))) as {
      file: string;
      expires_at: number;
    };
    expect(written.file).toBe(file);
    expect(written.expires_at).toBeGreaterThan(0);
    expect(readFileSync(file, 'utf8').trim()).not.toBe(first);
    const missing = await cli([...mint, '--write', join(server.dir, 'no-such-dir', 't.jwt')]);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toContain(
      `Error (ERR_CLI_FILE): --write ${join(server.dir, 'no-such-dir', 't.jwt')}: `,
    );
  });

  it('agent count counts attested agents; agent purge evicts those expired longer than --expired-for, keeping bans', async () => {
    const now = Math.floor(Date.now() / 1000);
    const nodes = {
      fresh: now + DAY,
      recent: now - 2 * DAY,
      old: now - 40 * DAY,
      oldBanned: now - 40 * DAY,
    };
    const { datastore } = await openSqliteDatastore(server.dataDir, systemClock);
    try {
      for (const [name, expiresAt] of Object.entries(nodes))
        await datastore.upsertNode(
          {
            spiffeId: `${TD}/agent/purge/${name}`,
            attestationType: 'join_token',
            serialNumber: '0a',
            attestationCount: 1,
            expiresAt,
            selectors: [],
            createdAt: expiresAt - DAY,
          },
          'test',
        );
    } finally {
      await datastore.close();
    }
    ok(await cli(['agent', 'ban', ...admin(), '--spiffe-id', `${TD}/agent/purge/oldBanned`]));
    ok(await cli(['agent', 'ban', ...admin(), '--spiffe-id', `${TD}/agent/purge/never-attested`]));
    expect(JSON.parse(ok(await cli(['agent', 'count', ...admin(), '--output', 'json'])))).toEqual({
      count: 4,
    });
    expect(ok(await cli(['agent', 'count', ...admin()]))).toBe('4 attested agents\n');

    type Purged = { dry_run: boolean; agents: { spiffe_id: string }[] };
    const ids = (p: Purged) => p.agents.map((a) => a.spiffe_id).sort();
    const dry = JSON.parse(
      ok(await cli(['agent', 'purge', ...admin(), '--dry-run', '--output', 'json'])),
    ) as Purged;
    expect(dry.dry_run).toBe(true);
    expect(ids(dry)).toEqual([`${TD}/agent/purge/old`, `${TD}/agent/purge/oldBanned`]);
    expect(JSON.parse(ok(await cli(['agent', 'count', ...admin(), '--output', 'json'])))).toEqual({
      count: 4,
    });

    const purged = ok(await cli(['agent', 'purge', ...admin(), '--expired-for', '1d']));
    expect(purged.split('\n')[0]).toBe('Evicted 3 expired agents');
    expect(purged).toContain(`${TD}/agent/purge/recent (agent SVID expired `);
    expect(JSON.parse(ok(await cli(['agent', 'count', ...admin(), '--output', 'json'])))).toEqual({
      count: 1,
    });
    const banned = JSON.parse(
      ok(await cli(['agent', 'list', ...admin(), '--banned', '--output', 'json'])),
    ) as {
      agents: { spiffe_id: string }[];
    };
    expect(banned.agents.map((a) => a.spiffe_id).sort()).toEqual([
      `${TD}/agent/purge/never-attested`,
      `${TD}/agent/purge/oldBanned`,
    ]);

    const { datastore: audit } = await openSqliteDatastore(server.dataDir, systemClock);
    try {
      const evicted = (await audit.listAudit(1000))
        .filter((r) => r.action === 'node.evict')
        .map((r) => r.objectId);
      expect(evicted.sort()).toEqual(
        ['old', 'oldBanned', 'recent'].map((name) => `${TD}/agent/purge/${name}`),
      );
    } finally {
      await audit.close();
    }
  });

  it('agent purge refuses an --expired-for that is not a duration, naming it', async () => {
    const result = await cli(['agent', 'purge', ...admin(), '--expired-for', '30']);
    expect(result.code).toBe(1);
    expect(result.stderr).toContain('--expired-for "30": allowed: a duration such as 90s, 30m, 24h or 7d');
  });
});

/** The first binary event log of a fixture directory. */
function eventlog(dir: string): string {
  return join(dir, 'debian-secureboot-cmdline.bin');
}
