import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AdminClient } from '../../src/server/admin/client.js';
import type { FederationRelationshipMessage } from '../../src/server/admin/messages.js';
import { systemClock } from '../../src/server/clock.js';
import { openSqliteDatastore } from '../../src/server/datastore/index.js';
import { SpiffeBundle } from '../../src/spiffe/index.js';
import { type CliResult, cli, startTestServer, type TestServer } from '../helpers/server.js';
import { TestCa } from '../helpers/workload-api.js';

const TD = 'spiffe://example.org';

describe('federation relationships over the admin socket, through the built CLI', () => {
  let server: TestServer;
  let partner: TestCa;
  /** partner.org's bundle as PEM, and as SPIFFE JSON with a refresh hint. */
  let pemFile: string;
  let spiffeFile: string;
  const admin = () => ['--admin-socket', server.socket];
  const federation = (...args: string[]) => cli(['federation', ...args, ...admin()]);
  const json = <T>(result: CliResult): T => {
    expect(result.stderr).toBe('');
    expect(result.code).toBe(0);
    return JSON.parse(result.stdout) as T;
  };
  const refused = (result: CliResult): string => {
    expect(result.stdout).toBe('');
    expect(result.code).toBe(1);
    return result.stderr;
  };
  const web = (td: string, ...more: string[]) => [
    '--trust-domain',
    td,
    '--bundle-endpoint-url',
    `https://${td}/bundle`,
    '--bundle-endpoint-profile',
    'https_web',
    ...more,
  ];
  const spiffe = (td: string, ...more: string[]) => [
    '--trust-domain',
    td,
    '--bundle-endpoint-url',
    `https://${td}:8443/`,
    '--bundle-endpoint-profile',
    'https_spiffe',
    '--endpoint-spiffe-id',
    `spiffe://${td}/spire/server`,
    ...more,
  ];

  beforeAll(async () => {
    server = await startTestServer();
    partner = await TestCa.create('partner.org');
    pemFile = join(server.dir, 'partner.pem');
    writeFileSync(pemFile, partner.certificate.toString());
    spiffeFile = join(server.dir, 'partner.json');
    writeFileSync(
      spiffeFile,
      new SpiffeBundle(partner.trustDomain, {
        x509Authorities: [partner.certificate],
        refreshHintSeconds: 300,
      }).marshal(),
    );
  });
  afterAll(async () => {
    await server.stop();
  });

  it('creates an https_web relationship and shows and lists it, without a bundle', async () => {
    const created = await federation('create', ...web('web.org'));
    expect(created.stderr).toBe('');
    expect(created.stdout).toMatch(
      /^Federation relationship created\.\nTrust domain {12}: web\.org\nBundle endpoint URL {5}: https:\/\/web\.org\/bundle\nBundle endpoint profile : https_web\n/,
    );
    expect(created.stdout).toContain('Bundle                  : none stored\n');
    expect(created.stdout).not.toContain('Endpoint SPIFFE ID');
    const shown = json<FederationRelationshipMessage>(
      await federation('show', '--trust-domain', 'spiffe://web.org', '--output', 'json'),
    );
    expect(shown).toMatchObject({
      trust_domain: 'web.org',
      bundle_endpoint_url: 'https://web.org/bundle',
      bundle_endpoint_profile: 'https_web',
      endpoint_spiffe_id: '',
      bundle: null,
    });
    expect(shown.created_at).toBeGreaterThan(0);
    const listed = json<{ relationships: FederationRelationshipMessage[] }>(
      await federation('list', '--output', 'json'),
    );
    expect(listed.relationships.map((r) => r.trust_domain)).toContain('web.org');
  });

  it('creates an https_spiffe relationship with a PEM bundle, and update stores a SPIFFE bundle with its refresh hint', async () => {
    const created = json<FederationRelationshipMessage>(
      await federation(
        'create',
        ...spiffe(
          'partner.org',
          '--trust-domain-bundle-path',
          pemFile,
          '--trust-domain-bundle-format',
          'pem',
        ),
        '--output',
        'json',
      ),
    );
    expect(created).toMatchObject({
      trust_domain: 'partner.org',
      bundle_endpoint_url: 'https://partner.org:8443/',
      bundle_endpoint_profile: 'https_spiffe',
      endpoint_spiffe_id: 'spiffe://partner.org/spire/server',
      bundle: { sequence: 1, refresh_hint: 0 },
    });
    const stored = json<{ bundles: { x509_pem: string }[] }>(
      await cli(['bundle', 'list', ...admin(), '--id', 'partner.org', '--output', 'json']),
    );
    expect(stored.bundles[0]?.x509_pem).toBe(partner.certificate.toString());

    const updated = json<FederationRelationshipMessage>(
      await federation(
        'update',
        '--trust-domain',
        'partner.org',
        '--bundle-endpoint-url',
        'https://bundles.partner.org/',
        '--trust-domain-bundle-path',
        spiffeFile,
        '--trust-domain-bundle-format',
        'spiffe',
        '--output',
        'json',
      ),
    );
    // Flags not given keep their values.
    expect(updated).toMatchObject({
      bundle_endpoint_url: 'https://bundles.partner.org/',
      bundle_endpoint_profile: 'https_spiffe',
      endpoint_spiffe_id: 'spiffe://partner.org/spire/server',
      bundle: { sequence: 2, refresh_hint: 300 },
    });
    const text = await federation('show', '--trust-domain', 'partner.org');
    expect(text.stdout).toContain('Endpoint SPIFFE ID      : spiffe://partner.org/spire/server\n');
    expect(text.stdout).toContain('Bundle sequence         : 2\nBundle refresh hint     : 300s\n');
    expect(text.stdout).toMatch(/Bundle updated at {7}: \d{4}-\d\d-\d\dT/);
  });

  it('creates an https_spiffe relationship on a bundle stored before with bundle set', async () => {
    const other = await TestCa.create('stored.org');
    const file = join(server.dir, 'stored.pem');
    writeFileSync(file, other.certificate.toString());
    expect((await cli(['bundle', 'set', ...admin(), '--id', 'stored.org', '--path', file])).code).toBe(0);
    const created = json<FederationRelationshipMessage>(
      await federation('create', ...spiffe('stored.org'), '--output', 'json'),
    );
    expect(created.bundle).toMatchObject({ sequence: 1 });
  });

  it('update to https_web drops the endpoint SPIFFE ID, and back to https_spiffe needs one again', async () => {
    const ca = await TestCa.create('switch.org');
    const file = join(server.dir, 'switch.pem');
    writeFileSync(file, ca.certificate.toString());
    json(
      await federation(
        'create',
        ...spiffe('switch.org', '--trust-domain-bundle-path', file),
        '--output',
        'json',
      ),
    );
    const toWeb = json<FederationRelationshipMessage>(
      await federation(
        'update',
        '--trust-domain',
        'switch.org',
        '--bundle-endpoint-profile',
        'https_web',
        '--output',
        'json',
      ),
    );
    expect(toWeb).toMatchObject({ bundle_endpoint_profile: 'https_web', endpoint_spiffe_id: '' });
    expect(
      refused(
        await federation(
          'update',
          '--trust-domain',
          'switch.org',
          '--bundle-endpoint-profile',
          'https_spiffe',
        ),
      ),
    ).toContain("needs the endpoint server's SPIFFE ID");
  });

  it('refuses https_spiffe on a bundle without X.509 authorities', async () => {
    const jwtOnly = join(server.dir, 'jwt-only.json');
    const ca = await TestCa.create('jwtonly.org');
    writeFileSync(
      jwtOnly,
      new SpiffeBundle(ca.trustDomain, {
        jwtAuthorities: new Map([[ca.jwtKeyId, ca.jwtSigner.publicKey]]),
      }).marshal(),
    );
    expect(
      refused(
        await federation(
          'create',
          ...spiffe(
            'jwtonly.org',
            '--trust-domain-bundle-path',
            jwtOnly,
            '--trust-domain-bundle-format',
            'spiffe',
          ),
        ),
      ),
    ).toContain('the given bundle of jwtonly.org has no X.509 authorities');
  });

  it('deletes a relationship and keeps its bundle, and audits create, update and delete', async () => {
    const ca = await TestCa.create('gone.org');
    const file = join(server.dir, 'gone.pem');
    writeFileSync(file, ca.certificate.toString());
    json(
      await federation(
        'create',
        ...spiffe('gone.org', '--trust-domain-bundle-path', file),
        '--output',
        'json',
      ),
    );
    json(
      await federation(
        'update',
        '--trust-domain',
        'gone.org',
        '--bundle-endpoint-url',
        'https://gone.org/b',
        '--output',
        'json',
      ),
    );
    const deleted = await federation('delete', '--trust-domain', 'gone.org');
    expect(deleted.stderr).toBe('');
    expect(deleted.stdout).toBe(
      'Deleted federation relationship with gone.org.\nIts stored bundle (sequence 1) stays, and entries federating with gone.org still get it; remove it with "bundle delete --id gone.org" once no entry federates with it.\n',
    );
    expect(refused(await federation('show', '--trust-domain', 'gone.org'))).toContain(
      'no federation relationship',
    );
    const bundles = json<{ bundles: { trust_domain: string; sequence: number }[] }>(
      await cli(['bundle', 'list', ...admin(), '--id', 'gone.org', '--output', 'json']),
    );
    expect(bundles.bundles).toMatchObject([{ trust_domain: 'gone.org', sequence: 1 }]);

    const { datastore } = await openSqliteDatastore(server.dataDir, systemClock);
    try {
      const records = (await datastore.listAudit(1000)).filter((r) => r.objectId === 'gone.org').reverse();
      const actor = `uid:${process.getuid?.()}`;
      expect(records.map((r) => [r.action, r.objectType, r.actor])).toEqual([
        ['federation.create', 'federation', actor],
        ['bundle.set', 'bundle', actor],
        ['federation.update', 'federation', actor],
        ['federation.delete', 'federation', actor],
      ]);
      expect(records[2]?.detail).toEqual({
        before: {
          bundle_endpoint_url: 'https://gone.org:8443/',
          profile: 'https_spiffe',
          endpoint_spiffe_id: 'spiffe://gone.org/spire/server',
        },
        after: {
          bundle_endpoint_url: 'https://gone.org/b',
          profile: 'https_spiffe',
          endpoint_spiffe_id: 'spiffe://gone.org/spire/server',
        },
      });
    } finally {
      await datastore.close();
    }
  });

  describe('entries federate only with trust domains the server has a relationship or bundle for', () => {
    const entryArgs = (path: string, ...more: string[]) => [
      'entry',
      'create',
      ...admin(),
      '--spiffe-id',
      `${TD}/fed/${path}`,
      '--parent-id',
      `${TD}/agent/fed`,
      '--selector',
      `unix:uid:${path.length}`,
      ...more,
    ];

    it('entry create refuses an unknown trust domain, naming it, and takes related and bundled ones', async () => {
      expect(
        refused(await cli(entryArgs('a', '--federates-with', 'web.org', '--federates-with', 'nowhere.org'))),
      ).toBe(
        'Error (ERR_FEDERATES_WITH_UNKNOWN): federates_with: nowhere.org has neither a federation relationship nor a stored bundle; create one first ("federation create" or "bundle set")\n',
      );
      // web.org has a relationship and no bundle yet; gone.org a bundle and no relationship.
      const ok = await cli(
        entryArgs('b', '--federates-with', 'web.org', '--federates-with', 'gone.org', '--output', 'json'),
      );
      expect(ok.code, ok.stderr).toBe(0);
    });

    it('a --data file has its entries with unknown trust domains refused by index, the others created', async () => {
      const file = join(server.dir, 'fed-batch.json');
      writeFileSync(
        file,
        JSON.stringify({
          entries: [
            {
              spiffe_id: `${TD}/fed/d0`,
              parent_id: `${TD}/agent/fed`,
              selectors: ['unix:uid:10'],
              federates_with: ['partner.org'],
            },
            {
              spiffe_id: `${TD}/fed/d1`,
              parent_id: `${TD}/agent/fed`,
              selectors: ['unix:uid:11'],
              federates_with: ['ghost.org', 'partner.org'],
            },
            { spiffe_id: `${TD}/fed/d2`, parent_id: `${TD}/agent/fed`, selectors: ['unix:uid:12'] },
          ],
        }),
      );
      const result = await cli(['entry', 'create', ...admin(), '--data', file, '--output', 'json']);
      expect(result.code).toBe(1);
      const { results } = JSON.parse(result.stdout) as {
        results: { index: number; status: { code: number; error_code: string; message: string } }[];
      };
      expect(results.map((r) => [r.index, r.status.error_code])).toEqual([
        [0, ''],
        [1, 'ERR_FEDERATES_WITH_UNKNOWN'],
        [2, ''],
      ]);
      expect(results[1]?.status.message).toContain('federates_with: ghost.org has neither');
      expect(result.stderr).toContain('entry 1: ERR_FEDERATES_WITH_UNKNOWN: federates_with: ghost.org');
    });

    it('bundle delete refuses while entries federate with the trust domain, and deletes once none does', async () => {
      const ca = await TestCa.create('kept.org');
      const file = join(server.dir, 'kept.pem');
      writeFileSync(file, ca.certificate.toString());
      expect((await cli(['bundle', 'set', ...admin(), '--id', 'kept.org', '--path', file])).code).toBe(0);
      const created = json<{ results: { entry: { id: string } }[] }>(
        await cli(entryArgs('kept', '--federates-with', 'kept.org', '--output', 'json')),
      );
      expect(refused(await cli(['bundle', 'delete', ...admin(), '--id', 'kept.org']))).toBe(
        'Error (ERR_BUNDLE_IN_USE): 1 registration entry federates with kept.org: their workloads would silently lose its bundle; take it out of their federates-with first (entry show --federates-with kept.org), or delete with --mode dissociate (takes it out of them) or --mode delete (deletes them)\n',
      );
      const listed = json<{ bundles: { trust_domain: string }[] }>(
        await cli(['bundle', 'list', ...admin(), '--id', 'kept.org', '--output', 'json']),
      );
      expect(listed.bundles.map((b) => b.trust_domain)).toEqual(['kept.org']);
      const id = created.results[0]?.entry.id ?? '';
      expect((await cli(['entry', 'delete', ...admin(), '--entry-id', id])).code).toBe(0);
      expect((await cli(['bundle', 'delete', ...admin(), '--id', 'kept.org'])).code).toBe(0);
    });

    it('bundle delete --mode dissociate takes the trust domain out of the entries; --mode delete deletes them', async () => {
      const ca = await TestCa.create('ending.org');
      const file = join(server.dir, 'ending.pem');
      writeFileSync(file, ca.certificate.toString());
      const set = () => cli(['bundle', 'set', ...admin(), '--id', 'ending.org', '--path', file]);
      const federating = async (path: string) =>
        json<{ results: { entry: { id: string } }[] }>(
          await cli(entryArgs(path, '--federates-with', 'ending.org', '--output', 'json')),
        ).results[0]?.entry.id ?? '';
      const show = (id: string) => cli(['entry', 'show', ...admin(), '--entry-id', id, '--output', 'json']);
      const remove = (mode: string) =>
        cli(['bundle', 'delete', ...admin(), '--id', 'ending.org', '--mode', mode]);

      expect((await set()).code).toBe(0);
      const kept = await federating('dissociated');
      const dissociated = await remove('dissociate');
      expect(dissociated.stdout).toBe(
        'Bundle for ending.org deleted. Entries federating with it were dissociated from it.\n',
      );
      expect(json<{ entries: unknown[] }>(await show(kept)).entries).toHaveLength(1);
      const stillFederating = json<{ entries: unknown[] }>(
        await cli(['entry', 'show', ...admin(), '--federates-with', 'ending.org', '--output', 'json']),
      );
      expect(stillFederating.entries).toEqual([]);

      expect((await set()).code).toBe(0);
      const gone = await federating('deleted');
      expect((await remove('delete')).stdout).toBe(
        'Bundle for ending.org deleted. Entries federating with it were deleted.\n',
      );
      expect((await show(gone)).code).toBe(1);
      expect((await show(kept)).code).toBe(0);

      const bogus = await remove('cascade');
      expect(bogus.code).not.toBe(0);
      expect(bogus.stderr).toContain(
        "argument 'cascade' is invalid. Allowed choices are restrict, dissociate, delete",
      );
    });

    it('entry update refuses adding an unknown trust domain, and keeps one the entry already had', async () => {
      // Known through a relationship with no bundle fetched yet, then unknown once it is deleted.
      expect((await federation('create', ...web('fading.org'))).code).toBe(0);
      const created = json<{ results: { entry: { id: string } }[] }>(
        await cli(entryArgs('fading', '--federates-with', 'fading.org', '--output', 'json')),
      );
      const id = created.results[0]?.entry.id ?? '';
      expect((await federation('delete', '--trust-domain', 'fading.org')).code).toBe(0);
      // The entry is untouched by the relationship's removal, and other fields can still change.
      const hinted = json<{ results: { entry: { hint: string; federates_with: string[] } }[] }>(
        await cli([
          'entry',
          'update',
          ...admin(),
          '--entry-id',
          id,
          '--hint',
          'still here',
          '--output',
          'json',
        ]),
      );
      expect(hinted.results[0]?.entry).toMatchObject({ hint: 'still here', federates_with: ['fading.org'] });
      expect(
        refused(
          await cli([
            'entry',
            'update',
            ...admin(),
            '--entry-id',
            id,
            '--federates-with',
            'fading.org',
            '--federates-with',
            'ghost.org',
          ]),
        ),
      ).toContain('federates_with: ghost.org has neither');
    });
  });

  it.each([
    ['an http:// URL', web('bad.org').map((a) => a.replace('https://', 'http://')), 'is not an https:// URL'],
    [
      'a URL with credentials',
      web('bad.org').map((a) => a.replace('https://', 'https://u:p@')),
      'carries credentials',
    ],
    [
      'a URL with a fragment',
      web('bad.org').map((a) => (a.startsWith('https://') ? `${a}#top` : a)),
      'has a fragment',
    ],
    [
      'text that is no URL',
      [
        '--trust-domain',
        'bad.org',
        '--bundle-endpoint-url',
        'bundle.bad.org',
        '--bundle-endpoint-profile',
        'https_web',
      ],
      'is not a URL',
    ],
    [
      'https_spiffe without an endpoint ID',
      spiffe('partner.org').slice(0, 6),
      "needs the endpoint server's SPIFFE ID (--endpoint-spiffe-id)",
    ],
    [
      'https_web with an endpoint ID',
      web('bad.org', '--endpoint-spiffe-id', 'spiffe://bad.org/s'),
      'give no --endpoint-spiffe-id',
    ],
    [
      'an endpoint ID of another trust domain',
      spiffe('partner.org').map((a) => a.replace('spiffe://partner.org/', 'spiffe://elsewhere.org/')),
      'is not in partner.org',
    ],
    [
      'https_spiffe without a bundle',
      spiffe('nobundle.org'),
      'profile https_spiffe authenticates the bundle endpoint of nobundle.org',
    ],
    ["the server's own trust domain", web('example.org'), "example.org is this server's own trust domain"],
    ['an existing relationship', web('web.org'), 'a federation relationship with web.org already exists'],
  ])('create refuses %s, naming what was wrong', async (_what, args, message) => {
    const stderr = refused(await federation('create', ...args));
    expect(stderr).toContain(message);
  });

  it('refuses a bundle that is not one, and a format without a bundle', async () => {
    const junk = join(server.dir, 'junk.pem');
    writeFileSync(junk, 'not a certificate\n');
    expect(
      refused(await federation('create', ...spiffe('junk.org', '--trust-domain-bundle-path', junk))),
    ).toMatch(/trust_domain_bundle: the bundle for junk\.org is not valid PEM \(ERR_/);
    expect(
      refused(await federation('create', ...web('junk.org', '--trust-domain-bundle-format', 'spiffe'))),
    ).toBe('Error (ERR_CLI_USAGE): --trust-domain-bundle-format needs --trust-domain-bundle-path\n');
    expect(refused(await federation('show', '--trust-domain', 'junk.org'))).toContain(
      'no federation relationship with trust domain "junk.org"',
    );
  });

  it.each([
    ['show', []],
    ['update', ['--bundle-endpoint-url', 'https://x/']],
    ['delete', []],
  ])('%s of an unknown relationship fails with not found', async (command, more) => {
    expect(refused(await federation(command, '--trust-domain', 'unknown.org', ...more))).toBe(
      'Error (ERR_FEDERATION_NOT_FOUND): no federation relationship with trust domain "unknown.org"; see "federation list"\n',
    );
  });

  it('answers each refusal with its stable code', async () => {
    const client = new AdminClient(server.socket);
    const relationship = (r: Partial<FederationRelationshipMessage>) => ({
      relationship: {
        trust_domain: 'codes.org',
        bundle_endpoint_url: 'https://codes.org/',
        bundle_endpoint_profile: 'https_web',
        ...r,
      },
    });
    try {
      const codeOf = (promise: Promise<unknown>) =>
        promise.then(
          () => 'resolved',
          (error: { errorCode: string }) => error.errorCode,
        );
      const create = (r: Partial<FederationRelationshipMessage>) =>
        codeOf(client.call('FederationService', 'CreateFederationRelationship', relationship(r)));
      expect(await create({ bundle_endpoint_url: 'http://codes.org/' })).toBe('ERR_FEDERATION_INVALID');
      expect(await create({ trust_domain: 'Codes.org' })).toBe('ERR_FEDERATION_INVALID');
      expect(await create({ bundle_endpoint_profile: 'https_other' })).toBe('ERR_FEDERATION_INVALID');
      expect(await create({ bundle_endpoint_profile: 'https_spiffe' })).toBe('ERR_FEDERATION_INVALID');
      expect(
        await create({ bundle_endpoint_profile: 'https_spiffe', endpoint_spiffe_id: 'spiffe://codes.org/s' }),
      ).toBe('ERR_FEDERATION_BUNDLE_MISSING');
      expect(await create({ trust_domain: 'example.org' })).toBe('ERR_FEDERATION_OWN_TRUST_DOMAIN');
      expect(await create({ trust_domain: 'web.org' })).toBe('ERR_FEDERATION_EXISTS');
      expect(
        await codeOf(
          client.call('FederationService', 'DeleteFederationRelationship', { trust_domain: 'codes.org' }),
        ),
      ).toBe('ERR_FEDERATION_NOT_FOUND');
      expect(
        await codeOf(client.call('FederationService', 'UpdateFederationRelationship', relationship({}))),
      ).toBe('ERR_FEDERATION_NOT_FOUND');
      // A client other than the CLI, with a mode the CLI would not let through: refused, bundle kept.
      expect(
        await codeOf(
          client.call('BundleService', 'DeleteFederatedBundle', {
            trust_domain: 'partner.org',
            mode: 'cascade',
          }),
        ),
      ).toBe('ERR_INVALID_ARGUMENT');
      expect(
        (await client.call('BundleService', 'ListFederatedBundles', {})).bundles.map((b) => b.trust_domain),
      ).toContain('partner.org');
    } finally {
      client.close();
    }
  });
});
