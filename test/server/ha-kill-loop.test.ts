/**
 * Two real servers on one real PostgreSQL and one SoftHSM2 token, written to through both admin
 * APIs without pause while a loop kill -9s one of them (alternating) and starts it again on the same
 * config. Afterwards every write a server acknowledged is there exactly once, whole, and readable
 * through both servers; writes no server acknowledged may or may not be there, but never in part.
 */
import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AgentApiClient } from '../../src/agent/client.js';
import { AdminClient } from '../../src/server/admin/client.js';
import type { EntryMessage } from '../../src/server/admin/messages.js';
import { keyAndCsr } from '../attestation/evil-agent.js';
import { assertBuilt } from '../helpers/dist.js';
import { startPostgres, type TestPostgres } from '../helpers/postgres.js';
import { freePort, startTestServer, type TestServer } from '../helpers/server.js';
import { createSoftHsm, type SoftHsm } from '../helpers/softhsm.js';

const TD = 'spiffe://example.org';
const PARENT = `${TD}/agent/ha`;
/** Kills in all: each server is killed ROUNDS / 2 times. */
const ROUNDS = 6;
/** Writes the victim acknowledges in a round before it is killed, so it dies under load. */
const BEFORE_KILL = 40;
/** Writes the survivor acknowledges while the victim is down, and each server after the last round. */
const WHILE_DOWN = 20;
const WRITERS_PER_SERVER = 3;
/** One join token is created every this many entry writes of a writer. */
const TOKEN_EVERY = 4;

let postgres: TestPostgres;
let softhsm: SoftHsm;
let database: pg.Client;
let uriDir: string;
const servers: TestServer[] = [];

beforeAll(async () => {
  assertBuilt();
  postgres = await startPostgres();
  softhsm = await createSoftHsm('ha-kill');
  const url = await postgres.createDatabase('ironroot_ha');
  uriDir = mkdtempSync(join(tmpdir(), 'ironroot-ha-'));
  const uriFile = join(uriDir, 'pg.uri');
  writeFileSync(uriFile, `${url}\n`, { mode: 0o600 });
  database = new pg.Client({ connectionString: url });
  // Fixed agent API ports, so a restarted server is found where it was.
  for (let i = 0; i < 2; i++)
    servers.push(
      await startTestServer({
        key_manager: softhsm.uri(),
        datastore: { type: 'postgres', connection_string_file: uriFile, tls: { mode: 'disable' } },
        bind_address: `127.0.0.1:${await freePort()}`,
      }),
    );
  await database.connect();
});

afterAll(async () => {
  await database?.end();
  for (const server of servers) await server.stop();
  await postgres?.stop();
  await softhsm?.cleanup();
  if (uriDir) rmSync(uriDir, { recursive: true, force: true });
});

async function readyStatus(server: TestServer): Promise<number> {
  try {
    return (await fetch(`http://127.0.0.1:${server.healthPort}/ready`)).status;
  } catch {
    return 0;
  }
}

const pause = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Polls until `condition` holds; bounded by the test's timeout, not by a clock here. */
async function until(condition: () => boolean | Promise<boolean>): Promise<void> {
  while (!(await condition())) await pause(50);
}

interface Acknowledged {
  n: number;
  id: string;
  /** The server its writer sends to first. */
  home: number;
  /** The server whose answer acknowledged it: the other one when home failed under the call. */
  by: number;
}

/** The entry write number `n`: two selectors, so an entry stored without all of its rows shows. */
const entryOf = (n: number) => ({
  spiffe_id: `${TD}/ha/${n}`,
  parent_id: PARENT,
  selectors: [
    { type: 'unix', value: `gid:${n}` },
    { type: 'unix', value: `uid:${n}` },
  ],
  dns_names: [`w${n}.ha.example.org`],
});

/**
 * Writers against both servers. A write whose call failed (the server died under it) is tried again
 * once on the other server, as a client with two addresses would: the answer is then either a new
 * entry (the first never committed) or ERR_ENTRY_DUPLICATE naming the one it did commit.
 */
function startWriters() {
  const entries: Acknowledged[] = [];
  const unacknowledged = new Set<number>();
  const tokens: { value: string; by: number }[] = [];
  const acks = [0, 0];
  let next = 0;
  let stopping = false;

  const writer = async (home: number, k: number) => {
    // Clients of its own: closing one after a failure must not cut another writer's call short.
    const clients = servers.map((s) => new AdminClient(s.socket));
    const client = (i: number) => clients[i] as AdminClient;
    // A failed call leaves its channel in reconnect back-off; a fresh client connects at once.
    const renew = (i: number) => {
      client(i).close();
      clients[i] = new AdminClient((servers[i] as TestServer).socket);
    };
    /** The id server `i` acknowledged write `n` with, or undefined when it did not. */
    const create = async (i: number, n: number): Promise<string | undefined> => {
      try {
        const { results } = await client(i).call('EntryService', 'BatchCreateEntry', {
          entries: [entryOf(n)],
        });
        const [result] = results;
        if (result?.status.code === 0 && result.entry !== null) return result.entry.id;
        if (result?.status.error_code === 'ERR_ENTRY_DUPLICATE')
          return /\(id ([0-9a-f-]+)\)/.exec(result.status.message)?.[1];
        return undefined;
      } catch {
        renew(i);
        return undefined;
      }
    };
    for (let round = 1; !stopping; round++) {
      const n = next++;
      let by = home;
      let id = await create(home, n);
      if (id === undefined) {
        by = 1 - home;
        id = await create(by, n);
      }
      if (id === undefined) {
        unacknowledged.add(n);
        await pause(20);
      } else {
        entries.push({ n, id, home, by });
        acks[by] = (acks[by] ?? 0) + 1;
      }
      if ((round + k) % TOKEN_EVERY === 0) {
        try {
          const token = await client(home).call('AgentService', 'CreateJoinToken', { ttl: 3600 });
          tokens.push({ value: token.value, by: home });
        } catch {
          renew(home);
        }
      }
    }
    for (const c of clients) c.close();
  };
  const running = Promise.all(
    servers.flatMap((_, home) => Array.from({ length: WRITERS_PER_SERVER }, (_, k) => writer(home, k))),
  );
  return {
    entries,
    unacknowledged,
    tokens,
    acks: (i: number) => acks[i] ?? 0,
    async stop() {
      stopping = true;
      await running;
    },
  };
}

/** Every entry under PARENT as `server` lists it through its admin API. */
async function listed(server: TestServer): Promise<EntryMessage[]> {
  const client = new AdminClient(server.socket);
  try {
    const all: EntryMessage[] = [];
    let token = '';
    do {
      const page = await client.call('EntryService', 'ListEntries', {
        filter: { by_parent_id: PARENT },
        page_token: token,
        page_size: 500,
      });
      all.push(...page.entries);
      token = page.next_page_token;
    } while (token !== '');
    return all;
  } finally {
    client.close();
  }
}

/** Attests a fresh agent key with `token` through `server`'s agent API; its SPIFFE ID. */
async function attestWith(server: TestServer, token: string): Promise<string> {
  const admin = new AdminClient(server.socket);
  const bundle = await admin.call('BundleService', 'GetBundle', {}).finally(() => admin.close());
  const port = /"port":(\d+)[^\n]*"agent API listening"/.exec(server.log())?.[1];
  const client = new AgentApiClient({
    address: `127.0.0.1:${port}`,
    trustDomain: 'example.org',
    bundlePem: bundle.x509_pem,
    deadlineMs: 30_000,
  });
  try {
    const { csr } = await keyAndCsr();
    const result = await client.attest(
      { method: 'join_token', csr, tpm: null, join_token: token },
      async () => {
        throw new Error('a join token needs no challenge');
      },
    );
    return result.spiffe_id;
  } finally {
    client.close();
  }
}

const rows = async (text: string, values: unknown[] = []) =>
  (await database.query({ text, values })).rows as Record<string, unknown>[];

describe('two servers on one PostgreSQL, each killed with SIGKILL in turn while both take writes', () => {
  it('loses no acknowledged write, stores each once and whole, and each server is ready again after its restart', async () => {
    const writers = startWriters();
    const restarts: { victim: number; ready: number }[] = [];
    try {
      for (let round = 0; round < ROUNDS; round++) {
        const victim = round % 2;
        const survivor = 1 - victim;
        const server = servers[victim] as TestServer;
        const base = writers.acks(victim);
        await until(() => writers.acks(victim) >= base + BEFORE_KILL);
        await server.kill9();
        const served = writers.acks(survivor);
        await until(() => writers.acks(survivor) >= served + WHILE_DOWN);
        await server.restart();
        await until(async () => (await readyStatus(server)) === 200);
        restarts.push({ victim, ready: await readyStatus(server) });
      }
      const after = [writers.acks(0), writers.acks(1)];
      await until(() => writers.acks(0) >= (after[0] ?? 0) + WHILE_DOWN);
      await until(() => writers.acks(1) >= (after[1] ?? 0) + WHILE_DOWN);
    } finally {
      await writers.stop();
    }
    expect(restarts).toEqual(
      Array.from({ length: ROUNDS }, (_, round) => ({ victim: round % 2, ready: 200 })),
    );

    // Both servers list the same entries, each whole: both selectors and its DNS name.
    const [first, second] = await Promise.all(servers.map(listed));
    const byId = (list: EntryMessage[] = []) => new Map(list.map((e) => [e.id, e]));
    expect(byId(second)).toEqual(byId(first));
    const stored = byId(first);
    const torn = [...stored.values()].filter((e) => {
      const n = Number(e.spiffe_id.slice(`${TD}/ha/`.length));
      const whole = entryOf(n);
      return (
        JSON.stringify(e.selectors) !== JSON.stringify(whole.selectors) ||
        JSON.stringify(e.dns_names) !== JSON.stringify(whole.dns_names)
      );
    });
    expect(torn).toEqual([]);

    // While one server was down, its writers' writes went to the other: both ways.
    const failedOver = new Set(writers.entries.filter((w) => w.by !== w.home).map((w) => w.by));
    expect([...failedOver].sort()).toEqual([0, 1]);

    // Every acknowledged write is there under the id it was acknowledged with, once.
    expect(writers.entries.length).toBeGreaterThanOrEqual(ROUNDS * (BEFORE_KILL + WHILE_DOWN));
    const lost = writers.entries.filter((w) => stored.get(w.id)?.spiffe_id !== entryOf(w.n).spiffe_id);
    expect(lost).toEqual([]);
    const perSpiffeId = new Map<string, number>();
    for (const e of stored.values()) perSpiffeId.set(e.spiffe_id, (perSpiffeId.get(e.spiffe_id) ?? 0) + 1);
    expect([...perSpiffeId].filter(([, count]) => count > 1)).toEqual([]);
    // Nothing was stored that no writer sent.
    const sent = new Set([...writers.entries.map((w) => w.n), ...writers.unacknowledged]);
    expect([...stored.values()].filter((e) => !sent.has(Number(e.spiffe_id.split('/').pop())))).toEqual([]);

    // In the tables themselves: no entry without its selectors or its audit record.
    expect(
      await rows(
        `SELECT e.id FROM registration_entries e WHERE e.parent_id = $1
           AND ((SELECT count(*) FROM entry_selectors s WHERE s.entry_id = e.id) <> 2
             OR NOT EXISTS (SELECT 1 FROM audit_log a WHERE a.action = 'entry.create' AND a.object_id = e.id))`,
        [PARENT],
      ),
    ).toEqual([]);
    expect(
      await rows(
        `SELECT s.entry_id FROM entry_selectors s
           WHERE NOT EXISTS (SELECT 1 FROM registration_entries e WHERE e.id = s.entry_id)`,
      ),
    ).toEqual([]);

    // Every acknowledged join token is stored (as its hash) with its audit record.
    expect(writers.tokens.map((t) => t.by)).toEqual(expect.arrayContaining([0, 1]));
    const hashes = writers.tokens.map((t) => createHash('sha256').update(t.value).digest('hex'));
    const storedTokens = await rows(
      `SELECT t.token_hash FROM join_tokens t
         WHERE t.token_hash = ANY($1)
           AND EXISTS (SELECT 1 FROM audit_log a WHERE a.action = 'join_token.create'
                         AND a.object_id = substr(t.token_hash, 1, 12))`,
      [hashes],
    );
    expect(storedTokens.map((r) => r.token_hash).sort()).toEqual([...hashes].sort());
    expect(
      await rows(
        `SELECT t.token_hash FROM join_tokens t WHERE NOT EXISTS (SELECT 1 FROM audit_log a
           WHERE a.action = 'join_token.create' AND a.object_id = substr(t.token_hash, 1, 12))`,
      ),
    ).toEqual([]);

    // A token one server acknowledged admits an agent through the other.
    for (const by of [0, 1]) {
      const token = writers.tokens.find((t) => t.by === by)?.value ?? '';
      const agentId = await attestWith(servers[1 - by] as TestServer, token);
      const hash = createHash('sha256').update(token).digest('hex');
      expect(agentId).toMatch(new RegExp(`^${TD}/agent/join_token/[0-9a-f]+$`));
      expect(hash.startsWith(agentId.split('/').pop() ?? '-')).toBe(true);
    }
  }, 900_000);
});
