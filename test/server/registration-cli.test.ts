import { createHash } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { systemClock } from '../../src/server/clock.js';
import { openSqliteDatastore } from '../../src/server/datastore/index.js';
import { type CliResult, cli, startTestServer, type TestServer } from '../helpers/server.js';

const TD = 'spiffe://example.org';

describe('registration API over the admin socket, through the built CLI', () => {
  let server: TestServer;
  const admin = () => ['--admin-socket', server.socket];
  const json = <T>(result: CliResult): T => {
    expect(result.stderr).toBe('');
    expect(result.code).toBe(0);
    return JSON.parse(result.stdout) as T;
  };
  const create = (...args: string[]) => cli(['entry', 'create', ...admin(), '--output', 'json', ...args]);

  beforeAll(async () => {
    server = await startTestServer();
    // Entries federate only with trust domains the server knows (ERR_FEDERATES_WITH_UNKNOWN).
    for (const td of ['partner.org', 'x.org', 'peer.org']) {
      const created = await cli([
        'federation',
        'create',
        ...admin(),
        '--trust-domain',
        td,
        '--bundle-endpoint-url',
        `https://${td}/bundle`,
        '--bundle-endpoint-profile',
        'https_web',
      ]);
      expect(created.stderr).toBe('');
    }
  });
  afterAll(async () => {
    await server.stop();
  });

  it('creates, shows, updates, counts and deletes an entry', async () => {
    type Created = { results: { entry: { id: string; revision_number: number; dns_names: string[] } }[] };
    const created = json<Created>(
      await create(
        '--spiffe-id',
        `${TD}/crud`,
        '--parent-id',
        `${TD}/agent/a`,
        '--selector',
        'unix:uid:1000',
        '--selector',
        'unix:gid:1000',
        '--dns',
        'crud.example.org',
        '--x509-svid-ttl',
        '600',
        '--federates-with',
        'partner.org',
        '--hint',
        'internal',
      ),
    );
    const id = created.results[0]?.entry.id ?? '';
    expect(id).toMatch(/^[0-9a-f-]{36}$/);

    const shown = json<{ entries: { spiffe_id: string; selectors: unknown[]; x509_svid_ttl: number }[] }>(
      await cli(['entry', 'show', ...admin(), '--entry-id', id, '--output', 'json']),
    );
    expect(shown.entries[0]).toMatchObject({
      spiffe_id: `${TD}/crud`,
      selectors: [
        { type: 'unix', value: 'gid:1000' },
        { type: 'unix', value: 'uid:1000' },
      ],
      x509_svid_ttl: 600,
      federates_with: ['partner.org'],
      hint: 'internal',
    });

    const updated = json<Created>(
      await cli([
        'entry',
        'update',
        ...admin(),
        '--entry-id',
        id,
        '--jwt-svid-ttl',
        '120',
        '--output',
        'json',
      ]),
    );
    expect(updated.results[0]?.entry).toMatchObject({
      revision_number: 1,
      jwt_svid_ttl: 120,
      x509_svid_ttl: 600,
    });

    const pretty = await cli(['entry', 'show', ...admin(), '--spiffe-id', `${TD}/crud`]);
    expect(pretty.stdout).toContain('Found 1 entry');
    expect(pretty.stdout).toContain(`Entry ID         : ${id}`);
    expect(pretty.stdout).toContain('JWT-SVID TTL     : 120');

    expect(
      json<{ count: number }>(
        await cli(['entry', 'count', ...admin(), '--spiffe-id', `${TD}/crud`, '--output', 'json']),
      ).count,
    ).toBe(1);
    const deleted = await cli(['entry', 'delete', ...admin(), '--entry-id', id]);
    expect(deleted.stdout.trim()).toBe(`Deleted entry ${id}`);
    expect(
      json<{ count: number }>(
        await cli(['entry', 'count', ...admin(), '--spiffe-id', `${TD}/crud`, '--output', 'json']),
      ).count,
    ).toBe(0);
  });

  it.each([
    [
      'an ID outside the trust domain',
      ['--spiffe-id', 'spiffe://other.org/w', '--parent-id', `${TD}/agent/a`, '--selector', 'unix:uid:1'],
      'ERR_SPIFFE_ID_OUTSIDE_TRUST_DOMAIN',
      `spiffe_id "spiffe://other.org/w" is outside this server's trust domain; use an ID of the form spiffe://example.org/…`,
    ],
    [
      'a malformed SPIFFE ID',
      ['--spiffe-id', `${TD}/a//b`, '--parent-id', `${TD}/agent/a`, '--selector', 'unix:uid:1'],
      'ERR_SPIFFE_ID_INVALID',
      `spiffe_id "${TD}/a//b" is not a valid SPIFFE ID (ERR_SPIFFEID_EMPTY_SEGMENT): SPIFFE ID "${TD}/a//b" has an empty path segment; SPIFFE-ID §2.2 forbids empty segments ("//"): remove the extra slash`,
    ],
    [
      'a TTL out of range',
      [
        '--spiffe-id',
        `${TD}/w`,
        '--parent-id',
        `${TD}/agent/a`,
        '--selector',
        'unix:uid:1',
        '--x509-svid-ttl',
        '99999999',
      ],
      'ERR_TTL_OUT_OF_RANGE',
      'x509_svid_ttl 99999999 is out of range; allowed: 0..2592000 seconds (0 = server default)',
    ],
    [
      'an entry without selectors',
      ['--spiffe-id', `${TD}/w`, '--parent-id', `${TD}/agent/a`],
      'ERR_INVALID_ARGUMENT',
      'an entry needs at least one selector (type:value), e.g. unix:uid:1000',
    ],
  ])('refuses %s with its code and message', async (_name, args, code, message) => {
    const result = await create(...args);
    expect(result.code).toBe(1);
    const body = JSON.parse(result.stdout) as {
      results: { status: { error_code: string; message: string } }[];
    };
    expect(body.results[0]?.status).toMatchObject({ error_code: code, message });
    expect(result.stderr).toBe(`${JSON.stringify({ error: { code, message } })}\n`);
  });

  it('refuses a malformed selector on the command line', async () => {
    const result = await create(
      '--spiffe-id',
      `${TD}/w`,
      '--parent-id',
      `${TD}/agent/a`,
      '--selector',
      'unixuid',
    );
    expect(result.code).toBe(1);
    expect(JSON.parse(result.stderr)).toEqual({
      error: {
        code: 'ERR_SELECTOR_MALFORMED',
        message:
          'selector "unixuid" is malformed; write it as type:value (e.g. unix:uid:1000), with a non-empty type and value',
      },
    });
  });

  it('refuses a malformed selector sent by a client', async () => {
    const file = join(server.dir, 'bad-selector.json');
    writeFileSync(
      file,
      JSON.stringify([
        { spiffe_id: `${TD}/w`, parent_id: `${TD}/agent/a`, selectors: [{ type: 'unix', value: '' }] },
      ]),
    );
    const result = await create('--data', file);
    expect(result.code).toBe(1);
    expect(result.stdout).toContain('"error_code": "ERR_SELECTOR_MALFORMED"');
  });

  it('refuses an entry that gives a selector twice, on the command line, in a file and in an update, keeping the rest', async () => {
    const twice =
      'selector "unix:uid:3" is given twice; give each selector once (an entry matches a workload with all of them)';
    const selectorTwice = [
      '--parent-id',
      `${TD}/agent/a`,
      '--selector',
      'unix:uid:3',
      '--selector',
      'unix:uid:3',
    ];
    const cmdLine = await create('--spiffe-id', `${TD}/twice`, ...selectorTwice);
    expect(cmdLine.code).toBe(1);
    expect(JSON.parse(cmdLine.stderr)).toEqual({ error: { code: 'ERR_INVALID_ARGUMENT', message: twice } });

    const file = join(server.dir, 'twice.json');
    const entry = (name: string, selectors: string[]) => ({
      spiffe_id: `${TD}/twice/${name}`,
      parent_id: `${TD}/agent/a`,
      selectors,
    });
    writeFileSync(
      file,
      JSON.stringify([entry('0', ['unix:uid:3', 'unix:gid:3', 'unix:uid:3']), entry('1', ['unix:uid:3'])]),
    );
    const fromFile = await create('--data', file);
    expect(fromFile.code).toBe(1);
    type Results = { results: { index: number; status: { error_code: string; message: string } }[] };
    expect(
      (JSON.parse(fromFile.stdout) as Results).results.map((r) => [r.status.error_code, r.status.message]),
    ).toEqual([
      ['ERR_INVALID_ARGUMENT', twice],
      ['', 'OK'],
    ]);
    const stored = json<{ entries: { id: string; spiffe_id: string; revision_number: number }[] }>(
      await cli(['entry', 'show', ...admin(), '--spiffe-id', `${TD}/twice/1`, '--output', 'json']),
    );
    expect(stored.entries.map((e) => e.spiffe_id)).toEqual([`${TD}/twice/1`]);
    const id = stored.entries[0]?.id ?? '';

    const update = await cli([
      'entry',
      'update',
      ...admin(),
      '--entry-id',
      id,
      '--spiffe-id',
      `${TD}/twice/1`,
      ...selectorTwice,
      '--output',
      'json',
    ]);
    expect(update.code).toBe(1);
    expect(JSON.parse(update.stderr)).toEqual({ error: { code: 'ERR_INVALID_ARGUMENT', message: twice } });
    const after = json<{ entries: { revision_number: number; selectors: unknown[] }[] }>(
      await cli(['entry', 'show', ...admin(), '--entry-id', id, '--output', 'json']),
    );
    expect(after.entries[0]).toMatchObject({
      revision_number: 0,
      selectors: [{ type: 'unix', value: 'uid:3' }],
    });
  });

  it('refuses a duplicate entry, naming the existing one', async () => {
    const args = ['--spiffe-id', `${TD}/dup`, '--parent-id', `${TD}/agent/a`, '--selector', 'unix:uid:5'];
    const first = json<{ results: { entry: { id: string } }[] }>(await create(...args));
    const again = await create(...args);
    expect(again.code).toBe(1);
    expect(JSON.parse(again.stderr)).toEqual({
      error: {
        code: 'ERR_ENTRY_DUPLICATE',
        message: `an entry with the same spiffe_id, parent_id and selectors already exists (id ${first.results[0]?.entry.id}); update that entry instead`,
      },
    });
  });

  it('reports an unknown entry', async () => {
    for (const command of ['show', 'delete', 'update']) {
      const result = await cli(['entry', command, ...admin(), '--entry-id', 'no-such-id']);
      expect(result.code, command).toBe(1);
      expect(result.stderr, command).toBe(
        'Error (ERR_ENTRY_NOT_FOUND): no registration entry with id "no-such-id"; list entries with "entry show"\n',
      );
    }
  });

  it('creates a batch from --data and filters by selector match and federation', async () => {
    const sel = (...s: string[]) => s;
    const batch = [
      { spiffe_id: `${TD}/f/1`, parent_id: `${TD}/agent/f`, selectors: sel('k8s:ns:a') },
      { spiffe_id: `${TD}/f/2`, parent_id: `${TD}/agent/f`, selectors: sel('k8s:ns:a', 'k8s:sa:b') },
      {
        spiffe_id: `${TD}/f/3`,
        parent_id: `${TD}/agent/f`,
        selectors: sel('k8s:ns:a', 'k8s:sa:b', 'k8s:pod:c'),
        federates_with: ['x.org'],
      },
    ];
    const file = join(server.dir, 'batch.json');
    writeFileSync(file, JSON.stringify(batch));
    const created = json<{ results: unknown[] }>(await create('--data', file));
    expect(created.results).toHaveLength(3);
    const ids = async (match: string) => {
      const r = json<{ entries: { spiffe_id: string }[] }>(
        await cli([
          'entry',
          'show',
          ...admin(),
          '--parent-id',
          `${TD}/agent/f`,
          '--selector',
          'k8s:ns:a',
          '--selector',
          'k8s:sa:b',
          '--match-selectors-on',
          match,
          '--output',
          'json',
        ]),
      );
      return r.entries.map((e) => e.spiffe_id).sort();
    };
    expect(await ids('exact')).toEqual([`${TD}/f/2`]);
    expect(await ids('subset')).toEqual([`${TD}/f/1`, `${TD}/f/2`]);
    expect(await ids('superset')).toEqual([`${TD}/f/2`, `${TD}/f/3`]);
    expect(await ids('any')).toEqual([`${TD}/f/1`, `${TD}/f/2`, `${TD}/f/3`]);
    const federated = json<{ count: number }>(
      await cli(['entry', 'count', ...admin(), '--federates-with', 'x.org', '--output', 'json']),
    );
    expect(federated.count).toBe(1);
  });

  it('creates every entry of a SPIRE -data file, with the fields it maps', async () => {
    const entries = Array.from({ length: 40 }, (_, i) => ({
      spiffe_id: `${TD}/spire/${i}`,
      parent_id: `${TD}/agent/spire`,
      selectors: [
        { type: 'unix', value: `uid:${i}` },
        { type: 'unix', value: 'gid:0' },
      ],
      x509_svid_ttl: 600,
      jwt_svid_ttl: 60,
      dns_names: [`w${i}.example.org`],
      federates_with: ['peer.org'],
      admin: i === 0,
      downstream: false,
      hint: 'spire-import',
      entryExpiry: 4_000_000_000,
    }));
    const file = join(server.dir, 'spire.json');
    writeFileSync(file, JSON.stringify({ entries }));
    type Created = { results: { index: number; status: { code: number }; entry: Record<string, unknown> }[] };
    const created = json<Created>(await create('--data', file));
    expect(created.results.map((r) => [r.index, r.status.code])).toEqual(entries.map((_, i) => [i, 0]));
    const shown = json<{ entries: Record<string, unknown>[] }>(
      await cli(['entry', 'show', ...admin(), '--parent-id', `${TD}/agent/spire`, '--output', 'json']),
    );
    expect(shown.entries).toHaveLength(40);
    const first = shown.entries.find((e) => e.spiffe_id === `${TD}/spire/0`);
    expect(first).toMatchObject({
      selectors: [
        { type: 'unix', value: 'gid:0' },
        { type: 'unix', value: 'uid:0' },
      ],
      x509_svid_ttl: 600,
      jwt_svid_ttl: 60,
      dns_names: ['w0.example.org'],
      federates_with: ['peer.org'],
      admin: true,
      hint: 'spire-import',
      expires_at: 4_000_000_000,
    });
  });

  it('creates a file larger than one request may carry, in several batches, every entry once', async () => {
    const hint = 'h'.repeat(1000);
    const entries = Array.from({ length: 6000 }, (_, i) => ({
      spiffe_id: `${TD}/big/${i}`,
      parent_id: `${TD}/agent/big`,
      selectors: [`unix:uid:${i}`],
      hint,
    }));
    const file = join(server.dir, 'big.json');
    writeFileSync(file, JSON.stringify({ entries }));
    const created = json<{ results: { index: number; status: { code: number } }[] }>(
      await create('--data', file),
    );
    expect(created.results.filter((r) => r.status.code === 0).map((r) => r.index)).toEqual(
      entries.map((_, i) => i),
    );
    const count = json<{ count: number }>(
      await cli(['entry', 'count', ...admin(), '--parent-id', `${TD}/agent/big`, '--output', 'json']),
    );
    expect(count.count).toBe(6000);
  });

  it('reports each refused entry of a file by index and code, and creates the others', async () => {
    const ok = (name: string) => ({
      spiffe_id: `${TD}/mixed/${name}`,
      parent_id: `${TD}/agent/m`,
      selectors: ['unix:uid:1'],
    });
    const entries = [
      ok('0'),
      { ...ok('1'), spiffe_id: `${TD}/agent/sneaky` },
      { ...ok('2'), selectors: ['unixuid'] },
      { ...ok('3'), colour: 'blue' },
      { ...ok('4'), store_svid: true },
      ok('0'),
      { ...ok('6'), x509_svid_ttl: '600' },
      ok('7'),
    ];
    const file = join(server.dir, 'mixed.json');
    writeFileSync(file, JSON.stringify({ entries }));
    const result = await create('--data', file);
    expect(result.code).toBe(1);
    type Results = { results: { index: number; status: { error_code: string; message: string } }[] };
    const { results } = JSON.parse(result.stdout) as Results;
    expect(results.map((r) => [r.index, r.status.error_code])).toEqual([
      [0, ''],
      [1, 'ERR_SPIFFE_ID_RESERVED'],
      [2, 'ERR_SELECTOR_MALFORMED'],
      [3, 'ERR_INVALID_ARGUMENT'],
      [4, 'ERR_INVALID_ARGUMENT'],
      [5, 'ERR_ENTRY_DUPLICATE'],
      [6, 'ERR_INVALID_ARGUMENT'],
      [7, ''],
    ]);
    expect(results[3]?.status.message).toMatch(/^unknown field "colour"; known fields: spiffe_id, /);
    expect(results[4]?.status.message).toBe(
      'field "store_svid" is not supported: ironroot has no SVIDStore; remove it',
    );
    expect(results[6]?.status.message).toBe('x509_svid_ttl must be a non-negative integer');
    const shown = json<{ entries: { spiffe_id: string }[] }>(
      await cli(['entry', 'show', ...admin(), '--parent-id', `${TD}/agent/m`, '--output', 'json']),
    );
    expect(shown.entries.map((e) => e.spiffe_id).sort()).toEqual([`${TD}/mixed/0`, `${TD}/mixed/7`]);

    const again = await cli(['entry', 'create', ...admin(), '--data', file]);
    expect(again.code).toBe(1);
    const lines = again.stderr.trimEnd().split('\n');
    expect(lines[0]).toBe('Error (ERR_CLI_ENTRIES_REFUSED): 8 of 8 entries failed:');
    expect(lines[1]).toMatch(/^ {2}entry 0: ERR_ENTRY_DUPLICATE: an entry with the same spiffe_id/);
    expect(lines[2]).toMatch(
      /^ {2}entry 1: ERR_SPIFFE_ID_RESERVED: spiffe_id "spiffe:\/\/example.org\/agent\/sneaky" is reserved/,
    );
    expect(lines[4]).toBe(`  entry 3: ERR_INVALID_ARGUMENT: ${results[3]?.status.message}`);
    expect(lines).toHaveLength(9);
  });

  it('refuses a --data file that is not an entries file, naming it, and creates nothing', async () => {
    const before = json<{ count: number }>(
      await cli(['entry', 'count', ...admin(), '--output', 'json']),
    ).count;
    /** The error --output json puts on standard error. */
    const refusal = (result: CliResult) =>
      (JSON.parse(result.stderr) as { error: { code: string; message: string } }).error;
    const cases: [string, string, RegExp][] = [
      ['broken.json', '{"entries": [', /^--data .*broken\.json: not valid JSON: /],
      ['object.json', '{"entry": []}', /^--data .*object\.json: expected \{"entries": /],
      ['extra.json', '{"entries": [], "x": 1}', /^--data .*extra\.json: unknown top-level field "x"/],
      ['empty.json', '{"entries": []}', /^--data .*empty\.json: it holds no entries$/],
    ];
    for (const [name, text, message] of cases) {
      const file = join(server.dir, name);
      writeFileSync(file, text);
      const result = await create('--data', file);
      expect(result.code, name).toBe(1);
      expect(result.stdout, name).toBe('');
      expect(refusal(result).code, name).toBe('ERR_CLI_DATA_INVALID');
      expect(refusal(result).message, name).toMatch(message);
    }
    const missing = refusal(await create('--data', join(server.dir, 'no-such.json')));
    expect(missing.code).toBe('ERR_CLI_FILE');
    expect(missing.message).toMatch(/^--data .*no-such\.json: cannot read it: ENOENT/);
    const mixed = refusal(await create('--data', join(server.dir, 'object.json'), '--spiffe-id', `${TD}/x`));
    expect(mixed.code).toBe('ERR_CLI_USAGE');
    expect(mixed.message).toMatch(/^--data takes every entry from the file/);
    expect(json<{ count: number }>(await cli(['entry', 'count', ...admin(), '--output', 'json'])).count).toBe(
      before,
    );
  });

  it('pages through more entries than one page holds', async () => {
    const batch = Array.from({ length: 1200 }, (_, i) => ({
      spiffe_id: `${TD}/paged/${i}`,
      parent_id: `${TD}/agent/paged`,
      selectors: ['unix:uid:1'],
    }));
    const file = join(server.dir, 'paged.json');
    writeFileSync(file, JSON.stringify({ entries: batch }));
    expect((await create('--data', file)).code).toBe(0);
    const shown = json<{ entries: { spiffe_id: string }[] }>(
      await cli(['entry', 'show', ...admin(), '--parent-id', `${TD}/agent/paged`, '--output', 'json']),
    );
    expect(new Set(shown.entries.map((e) => e.spiffe_id)).size).toBe(1200);
  });

  it('generates a single-use join token and stores only its hash', async () => {
    const token = json<{ value: string; expires_at: number }>(
      await cli(['token', 'generate', ...admin(), '--spiffe-id', `${TD}/node/1`, '--output', 'json']),
    );
    const now = Math.floor(Date.now() / 1000);
    expect(token.expires_at - now).toBeGreaterThan(590);
    expect(token.expires_at - now).toBeLessThanOrEqual(600);
    const { datastore } = await openSqliteDatastore(server.dataDir, systemClock);
    try {
      const hash = createHash('sha256').update(token.value).digest('hex');
      const used = await datastore.consumeJoinToken(hash, now, 'test');
      expect(used).toEqual({ tokenHash: hash, spiffeId: `${TD}/node/1`, expiresAt: token.expires_at });
      expect(await datastore.consumeJoinToken(hash, now, 'test')).toBeUndefined();
      const audit = JSON.stringify(await datastore.listAudit(1000));
      expect(audit).not.toContain(token.value);
    } finally {
      await datastore.close();
    }
    expect(server.log()).not.toContain(token.value);
  });

  it('refuses a join token TTL out of range and an ID outside the trust domain', async () => {
    const ttl = await cli(['token', 'generate', ...admin(), '--ttl', '999999999']);
    expect(ttl.stderr).toBe(
      'Error (ERR_TTL_OUT_OF_RANGE): ttl 999999999 is out of range; allowed: 1..604800 seconds (0 = server default)\n',
    );
    const id = await cli(['token', 'generate', ...admin(), '--spiffe-id', 'spiffe://elsewhere.org/n']);
    expect(id.stderr).toContain("is outside this server's trust domain");
  });

  it('lists, shows, bans and evicts agents, with node aliases', async () => {
    const nodeId = `${TD}/agent/tpm/ek1`;
    const { datastore } = await openSqliteDatastore(server.dataDir, systemClock);
    try {
      await datastore.upsertNode(
        {
          spiffeId: nodeId,
          attestationType: 'tpm',
          serialNumber: '0a',
          attestationCount: 1,
          expiresAt: 1_900_000_000,
          selectors: [
            { type: 'tpm', value: 'ek-hash:ek1' },
            { type: 'tpm', value: 'profile:dell' },
          ],
          tpm: { ekHash: 'ek1', akPublic: new Uint8Array([1]) },
          createdAt: 1_800_000_000,
        },
        'test',
      );
    } finally {
      await datastore.close();
    }
    const alias = await create(
      '--node',
      '--spiffe-id',
      `${TD}/cluster/dell`,
      '--selector',
      'tpm:profile:dell',
    );
    expect(alias.code).toBe(0);
    expect(alias.stdout).toContain(`"parent_id": "${TD}/ironroot/server"`);
    await create('--node', '--spiffe-id', `${TD}/cluster/hp`, '--selector', 'tpm:profile:hp');

    const shown = json<{ alias_spiffe_ids: string[]; ek_hash: string }>(
      await cli(['agent', 'show', ...admin(), '--spiffe-id', nodeId, '--output', 'json']),
    );
    expect(shown).toMatchObject({ alias_spiffe_ids: [`${TD}/cluster/dell`], ek_hash: 'ek1' });

    expect((await cli(['agent', 'list', ...admin()])).stdout).toContain('Found 1 agent');
    expect((await cli(['agent', 'list', ...admin(), '--banned'])).stdout).toContain('Found 0 agents');
    expect((await cli(['agent', 'ban', ...admin(), '--spiffe-id', nodeId])).stdout.trim()).toBe(
      `Banned agent ${nodeId}`,
    );
    expect((await cli(['agent', 'list', ...admin(), '--banned'])).stdout).toContain(
      'Banned            : true',
    );
    expect((await cli(['agent', 'evict', ...admin(), '--spiffe-id', nodeId])).stdout.trim()).toBe(
      `Evicted agent ${nodeId}`,
    );
    // Eviction forgets the node but not its ban.
    expect((await cli(['agent', 'show', ...admin(), '--spiffe-id', nodeId])).stdout).toContain(
      'Attestation type  : none (not attested)\nBanned            : true\n',
    );
    expect((await cli(['agent', 'unban', ...admin(), '--spiffe-id', nodeId])).stdout.trim()).toBe(
      `Unbanned agent ${nodeId}`,
    );
    const gone = await cli(['agent', 'show', ...admin(), '--spiffe-id', nodeId]);
    expect(gone.code).toBe(1);
    expect(gone.stderr).toBe(
      `Error (ERR_AGENT_NOT_FOUND): no attested agent with SPIFFE ID "${nodeId}"; see "agent list"\n`,
    );
  });

  it('answers healthcheck, and says why when the socket is wrong', async () => {
    expect((await cli(['healthcheck', ...admin()])).stdout.trim()).toBe('Server is healthy.');
    const bad = await cli(['healthcheck', '--admin-socket', join(server.dir, 'nope.sock')]);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toContain(
      "Error (ERR_UNAVAILABLE): Server is unhealthy: cannot reach the server's admin socket",
    );
  });

  it('reads the admin socket from --config', async () => {
    expect((await cli(['healthcheck', '--config', server.configFile])).stdout.trim()).toBe(
      'Server is healthy.',
    );
  });

  it('serves /live, /ready and /metrics', async () => {
    const base = `http://127.0.0.1:${server.healthPort}`;
    expect(await (await fetch(`${base}/live`)).json()).toEqual({ live: true });
    expect(await (await fetch(`${base}/ready`)).json()).toEqual({ ready: true });
    const metrics = await (await fetch(`${base}/metrics`)).text();
    expect(metrics).toMatch(
      /ironroot_admin_api_calls_total\{method="EntryService\/BatchCreateEntry",result="ok"\} [1-9]/,
    );
  });

  it('records who changed what in the audit log', async () => {
    const { datastore } = await openSqliteDatastore(server.dataDir, systemClock);
    try {
      // Enough to reach back past the thousands of entries the --data tests create.
      const log = await datastore.listAudit(100_000);
      expect(log.some((r) => r.action === 'entry.delete' && r.actor === 'uid:0')).toBe(true);
      expect(log.some((r) => r.action === 'node.ban' && r.actor === 'uid:0')).toBe(true);
    } finally {
      await datastore.close();
    }
  });
});
