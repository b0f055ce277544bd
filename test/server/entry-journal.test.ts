import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { EntryJournal } from '../../src/server/agentapi/entries.js';
import { systemClock } from '../../src/server/clock.js';
import type { Datastore, NewEntry } from '../../src/server/datastore/index.js';
import { openSqliteDatastore } from '../../src/server/datastore/index.js';

const TD = 'spiffe://example.org';
const SERVER = `${TD}/ironroot/server`;
const AGENT = `${TD}/agent/a`;
const NOW = 1_800_000_000;

function entry(spiffeId: string, parentId: string, overrides: Partial<NewEntry> = {}): NewEntry {
  return {
    spiffeId: `${TD}${spiffeId}`,
    parentId,
    selectors: [{ type: 'unix', value: 'uid:1' }],
    x509SvidTtl: 0,
    jwtSvidTtl: 0,
    dnsNames: [],
    admin: false,
    downstream: false,
    federatesWith: [],
    hint: '',
    expiresAt: 0,
    ...overrides,
  };
}

describe('entry journal authorization', () => {
  let store: Datastore;
  let journal: EntryJournal;
  const ids = (agentId: string, selectors: { type: string; value: string }[], now = NOW) =>
    [...journal.authorize(agentId, selectors, now).entries.values()].map((e) => e.spiffeId).sort();
  const create = async (...entries: NewEntry[]) => {
    const outcomes = await store.createEntries(entries, 'test');
    await journal.refresh();
    return outcomes.map((o) => ('entry' in o ? o.entry.id : ''));
  };

  beforeEach(async () => {
    const dir = join(mkdtempSync(join(tmpdir(), 'ironroot-journal-')), 'data');
    store = (await openSqliteDatastore(dir, systemClock)).datastore;
    journal = new EntryJournal(store, SERVER);
  });
  afterEach(async () => {
    await store.close();
  });

  it('walks a deep tree and node aliases, and keeps another agent’s entries out', async () => {
    const chain = Array.from({ length: 300 }, (_, i) =>
      entry(`/chain/${i}`, i === 0 ? AGENT : `${TD}/chain/${i - 1}`),
    );
    await create(
      ...chain,
      entry('/alias/k8s', SERVER, { selectors: [{ type: 'k8s', value: 'cluster:a' }] }),
      entry('/under-alias', `${TD}/alias/k8s`),
      entry('/other', `${TD}/agent/b`),
    );
    const mine = ids(AGENT, [{ type: 'k8s', value: 'cluster:a' }]);
    expect(mine).toEqual([...chain.map((e) => e.spiffeId), `${TD}/under-alias`].sort());
    expect(ids(AGENT, [])).toEqual(chain.map((e) => e.spiffeId).sort());
    expect(ids(`${TD}/agent/b`, [])).toEqual([`${TD}/other`]);
  });

  it('answers a repeated request alike, and follows creations and deletions', async () => {
    const [first] = await create(entry('/w1', AGENT));
    const before = journal.authorize(AGENT, [], NOW);
    expect(journal.authorize(AGENT, [], NOW)).toEqual(before);
    await create(entry('/w2', AGENT));
    expect(ids(AGENT, [])).toEqual([`${TD}/w1`, `${TD}/w2`]);
    await store.deleteEntry(first ?? '', 'test');
    await journal.refresh();
    expect(ids(AGENT, [])).toEqual([`${TD}/w2`]);
    expect(journal.authorize(AGENT, [], NOW).revision).toBe(journal.revision);
  });

  it('applies an entry write by reading that entry, and ignores other audited writes', async () => {
    await create(entry('/w1', AGENT));
    const loads = journal.loads;
    const revision = journal.revision;
    const node = {
      spiffeId: AGENT,
      attestationType: 'join_token',
      serialNumber: '01',
      expiresAt: NOW + 3600,
      selectors: [],
      attestationCount: 1,
      createdAt: NOW,
    };
    await store.upsertNode(node, 'test');
    await store.upsertNode({ ...node, serialNumber: '02' }, 'test');
    await store.banNode({ spiffeId: `${TD}/agent/z` }, 'test');
    await journal.refresh();
    expect(journal.loads).toBe(loads);
    expect(journal.revision).toBe(revision);
    expect(journal.applied).toBe(0);
    await store.upsertNode({ ...node, serialNumber: '03' }, 'test');
    const [second] = await create(entry('/w2', AGENT));
    expect(journal.applied).toBe(1);
    expect(journal.revision).toBeGreaterThan(revision);
    expect(ids(AGENT, [])).toEqual([`${TD}/w1`, `${TD}/w2`]);
    await store.banNode({ spiffeId: `${TD}/agent/y` }, 'test');
    await store.deleteEntry(second ?? '', 'test');
    await journal.refresh();
    expect(ids(AGENT, [])).toEqual([`${TD}/w1`]);
    expect(journal.applied).toBe(2);
    expect(journal.loads).toBe(loads);
  });

  it('drops an entry, and what hangs from it, once it expires, and recomputes when the clock goes back', async () => {
    await create(
      entry('/short', AGENT, { expiresAt: NOW + 10 }),
      entry('/under-short', `${TD}/short`),
      entry('/alias/short', SERVER, { selectors: [{ type: 'k8s', value: 'x' }], expiresAt: NOW + 20 }),
      entry('/under-alias', `${TD}/alias/short`),
    );
    const selectors = [{ type: 'k8s', value: 'x' }];
    expect(ids(AGENT, selectors)).toEqual([`${TD}/short`, `${TD}/under-alias`, `${TD}/under-short`]);
    expect(ids(AGENT, selectors, NOW + 10)).toEqual([`${TD}/under-alias`]);
    expect(ids(AGENT, selectors, NOW + 20)).toEqual([]);
    expect(ids(AGENT, selectors, NOW)).toEqual([`${TD}/short`, `${TD}/under-alias`, `${TD}/under-short`]);
  });

  it('keeps every agent’s authorization while agents of a fleet ask in turn, until an entry changes', async () => {
    const fleet = Array.from({ length: 2000 }, (_, i) => `${TD}/agent/join_token/${i}`);
    await create(...fleet.map((agent, i) => entry(`/w/${i}`, agent)));
    const round = () => {
      for (const [i, agent] of fleet.entries()) expect(ids(agent, [])).toEqual([`${TD}/w/${i}`]);
    };
    round();
    expect(journal.walks).toBe(fleet.length);
    // The next round answers each agent from its last one: nothing is walked.
    round();
    expect(journal.walks).toBe(fleet.length);
    await create(entry('/w/7b', fleet[7] ?? ''));
    expect(ids(fleet[7] ?? '', [])).toEqual([`${TD}/w/7`, `${TD}/w/7b`]);
    expect(journal.walks).toBe(fleet.length + 1);
  });

  it('bounds what it keeps by the entries the authorizations name, and answers the same past the bound', async () => {
    // An alias every node matches: its 1000 entries are in every agent's authorization, so 1100
    // agents would name 1.1 million entries between them, past the bound of 1 million.
    const under = Array.from({ length: 1000 }, (_, i) => entry(`/shared/${i}`, `${TD}/alias/all`));
    await create(entry('/alias/all', SERVER, { selectors: [] }), ...under);
    const fleet = Array.from({ length: 1100 }, (_, i) => `${TD}/agent/join_token/${i}`);
    const expected = under.map((e) => e.spiffeId).sort();
    for (let round = 0; round < 2; round++)
      for (const agent of fleet) expect(ids(agent, [])).toEqual(expected);
    // Asked for in turn, each agent's authorization was pushed out before its next round.
    expect(journal.walks).toBe(2 * fleet.length);
    // The most recent ones are kept.
    expect(ids(fleet.at(-1) ?? '', [])).toEqual(expected);
    expect(journal.walks).toBe(2 * fleet.length);
  });
});
