import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cli, startTestServer, type TestServer } from '../helpers/server.js';

describe('entry create reports each failure once', () => {
  let server: TestServer;
  const admin = () => ['--admin-socket', server.socket];
  const entry = ['--spiffe-id', 'spiffe://example.org/once', '--parent-id', 'spiffe://example.org/agent/a'];

  beforeAll(async () => {
    server = await startTestServer();
  });

  afterAll(async () => {
    await server?.stop();
  });

  it('says a refused entry on standard error only, once', async () => {
    expect((await cli(['entry', 'create', ...admin(), ...entry, '--selector', 'unix:uid:7'])).code).toBe(0);
    const again = await cli(['entry', 'create', ...admin(), ...entry, '--selector', 'unix:uid:7']);
    expect(again.code).toBe(1);
    expect(again.stdout).toBe('');
    expect(again.stderr.match(/already exists/g)).toHaveLength(1);
    expect(again.stderr).toMatch(/^Error \(ERR_ENTRY_DUPLICATE\): an entry with the same /);
  });

  it('lists every refused entry of a batch once, with its code, after printing the created ones', async () => {
    const file = join(server.dir, 'batch.json');
    writeFileSync(
      file,
      JSON.stringify([
        {
          spiffe_id: 'spiffe://example.org/once',
          parent_id: 'spiffe://example.org/agent/a',
          selectors: ['unix:uid:7'],
        },
        {
          spiffe_id: 'spiffe://example.org/new',
          parent_id: 'spiffe://example.org/agent/a',
          selectors: ['unix:uid:8'],
        },
        {
          spiffe_id: 'spiffe://other.org/x',
          parent_id: 'spiffe://example.org/agent/a',
          selectors: ['unix:uid:9'],
        },
      ]),
    );
    const result = await cli(['entry', 'create', ...admin(), '--data', file]);
    expect(result.code).toBe(1);
    expect(result.stdout).toContain('SPIFFE ID        : spiffe://example.org/new');
    expect(result.stdout).not.toContain('Failed');
    const lines = result.stderr.trimEnd().split('\n');
    expect(lines[0]).toBe('Error (ERR_CLI_ENTRIES_REFUSED): 2 of 3 entries failed:');
    expect(lines.slice(1).map((line) => line.trim().split(': ').slice(0, 2).join(': '))).toEqual([
      'entry 0: ERR_ENTRY_DUPLICATE',
      'entry 2: ERR_SPIFFE_ID_OUTSIDE_TRUST_DOMAIN',
    ]);
  });
});
