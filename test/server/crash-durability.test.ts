import { afterAll, describe, expect, it } from 'vitest';
import { AdminClient } from '../../src/server/admin/client.js';
import { cli, startTestServer, type TestServer } from '../helpers/server.js';

const TD = 'spiffe://example.org';
const KILL_AFTER = 2000;
const IN_FLIGHT = 8;

describe('kill -9 while a client creates entries', () => {
  let server: TestServer | undefined;
  afterAll(async () => {
    await server?.stop();
  });

  it('loses no acknowledged entry, and the server starts again cleanly', async () => {
    const running = await startTestServer();
    server = running;
    const client = new AdminClient(running.socket);
    const acknowledged: string[] = [];
    let next = 0;
    let killed: Promise<void> | undefined;

    // Each worker creates entries one by one until the server dies under it.
    const worker = async () => {
      for (;;) {
        const n = next++;
        let response: Awaited<ReturnType<typeof client.call<'EntryService', 'BatchCreateEntry'>>>;
        try {
          response = await client.call('EntryService', 'BatchCreateEntry', {
            entries: [
              {
                spiffe_id: `${TD}/crash/${n}`,
                parent_id: `${TD}/agent/crash`,
                selectors: [{ type: 'unix', value: `uid:${n}` }],
              },
            ],
          });
        } catch {
          return; // The server is gone: this call was never acknowledged.
        }
        const [result] = response.results;
        if (result?.status.code === 0 && result.entry !== null) acknowledged.push(result.entry.id);
        if (acknowledged.length >= KILL_AFTER && killed === undefined) killed = running.kill9();
      }
    };
    await Promise.all(Array.from({ length: IN_FLIGHT }, worker));
    await killed;
    client.close();
    expect(acknowledged.length).toBeGreaterThanOrEqual(KILL_AFTER);

    await running.restart();
    const after = new AdminClient(running.socket);
    try {
      const stored = new Set<string>();
      let token = '';
      do {
        const page = await after.call('EntryService', 'ListEntries', {
          filter: { by_parent_id: `${TD}/agent/crash` },
          page_token: token,
          page_size: 1000,
        });
        for (const e of page.entries) stored.add(e.id);
        token = page.next_page_token;
      } while (token !== '');
      const lost = acknowledged.filter((id) => !stored.has(id));
      expect(lost).toEqual([]);
    } finally {
      after.close();
    }
    const created = await cli([
      'entry',
      'create',
      '--admin-socket',
      running.socket,
      '--spiffe-id',
      `${TD}/after-crash`,
      '--parent-id',
      `${TD}/agent/crash`,
      '--selector',
      'unix:uid:after',
    ]);
    expect(created.code).toBe(0);
    expect((await cli(['healthcheck', '--admin-socket', running.socket])).stdout.trim()).toBe(
      'Server is healthy.',
    );
  });
});
