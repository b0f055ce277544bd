#!/usr/bin/env node
// Bulk entry creation on SQLite (what `entry create --data FILE` ends in), as a rate ratio against
// raw better-sqlite3 writing the same rows with the same durability:
//   A (baseline): better-sqlite3, prepared statements, one transaction, WAL + synchronous=FULL (the
//     datastore's pragmas): per entry its registration_entries row (with a random UUID and the
//     selectors key, the least a row needs), its selector rows and its audit row.
//   B: Datastore.createEntries (the admin API's batch path): the same rows, after checking each
//     entry against stored ones and earlier ones of the batch for duplicates, in one transaction.
//   C (before, for reference): Datastore.createEntry once per entry, as the batch did before: one
//     transaction and one fsync per entry. Run on fewer entries, as it is slow.
// Each sample writes into a fresh datastore file; A and B alternate in every round; figures are
// min/median/max over rounds. The goal is B / A >= 0.8.
//
// Then the entry journal's authorization (which entries an agent may have), at 1k, 10k and 50k
// entries parented to one agent, as one sync round asks for it (FetchEntries, then FetchBundles:
// two authorizations of the same agent at the same journal revision):
//   D (baseline): one pass over the agent's entries into a Map (the least any walk must do);
//   E: EntryJournal.authorize twice.
// And the journal's refresh after a node renewal (an audited write that changes no entry).
//
// Then the first sync after one entry write, at 1k, 10k, 50k and 100k entries parented to one agent
// (what the server does for that agent's FetchEntries, without the transport):
//   F (baseline, a full reload): a journal reading every entry (a fresh server's first refresh, and
//     what any entry write cost before), then the agent's authorization and its full answer;
//   G: after one entry created through the datastore, the kept journal's refresh (reads the audit
//     records since its last one and that one entry), the authorization, and the incremental answer
//     to the agent's cursor.
// F and G alternate in each round; G / F per round, min/median/max.
//
//   npx tsc -p tsconfig.build.json && node scripts/bench-entries.mjs [entries per batch]
//   BENCH_SYNC_SIZES=1000,10000 node scripts/bench-entries.mjs   (sizes of the last part)
import { randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import BetterSqlite3 from 'better-sqlite3';
import { reportFigure } from './lib/bench-figure.mjs';

const ds = await import('../dist/server/datastore/index.js').catch(() => {
  console.error('dist/ is missing: run `npx tsc -p tsconfig.build.json` first');
  process.exit(1);
});
const { selectorsKey } = await import('../dist/server/datastore/sql-datastore.js');
const { EntryJournal } = await import('../dist/server/agentapi/entries.js');

const N = Number(process.argv[2] ?? 5000);
const ROUNDS = 9;
const SYNC_ROUNDS = 7;
const SYNC_SIZES = (process.env.BENCH_SYNC_SIZES ?? '1000,10000,50000,100000').split(',').map(Number);
const SINGLE_N = 100;
const TD = 'spiffe://example.org';
const clock = { now: () => Date.now() };
const root = mkdtempSync(join(tmpdir(), 'ironroot-bench-entries-'));
let dirs = 0;

function newEntries(n, tag) {
  return Array.from({ length: n }, (_, i) => ({
    spiffeId: `${TD}/bench/${tag}/${i}`,
    parentId: `${TD}/agent/bench`,
    selectors: [
      { type: 'k8s', value: `ns:team-${i % 50}` },
      { type: 'k8s', value: `sa:svc-${i}` },
    ],
    x509SvidTtl: 3600,
    jwtSvidTtl: 300,
    dnsNames: [],
    admin: false,
    downstream: false,
    federatesWith: [],
    hint: '',
    expiresAt: 0,
  }));
}

/**
 * Wall and CPU milliseconds from now to the call of the function returned. CPU time leaves out the
 * fsync wait and most of what other processes on a shared machine do to the wall clock.
 */
function timer() {
  const wall = process.hrtime.bigint();
  const cpu = process.cpuUsage();
  return () => {
    const used = process.cpuUsage(cpu);
    return { wall: Number(process.hrtime.bigint() - wall) / 1e6, cpu: (used.user + used.system) / 1000 };
  };
}

/** A migrated, empty datastore file (the schema both sides write into). */
async function freshStore() {
  const dir = join(root, String(++dirs));
  const opened = await ds.openSqliteDatastore(dir, clock);
  return { dir, path: opened.path, datastore: opened.datastore };
}

async function sampleRaw(n) {
  const { path, datastore } = await freshStore();
  await datastore.close();
  const db = new BetterSqlite3(path);
  db.pragma('journal_mode = WAL');
  db.pragma('synchronous = FULL');
  db.pragma('foreign_keys = ON');
  const entries = newEntries(n, 'raw');
  const entry = db.prepare(
    'INSERT INTO registration_entries (id, spiffe_id, parent_id, selectors_key, x509_svid_ttl, jwt_svid_ttl, dns_names, admin, downstream, hint, expires_at, revision_number, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)',
  );
  const selector = db.prepare('INSERT INTO entry_selectors (entry_id, type, value) VALUES (?, ?, ?)');
  const audit = db.prepare(
    'INSERT INTO audit_log (at, actor, action, object_type, object_id, detail) VALUES (?, ?, ?, ?, ?, ?)',
  );
  const write = db.transaction(() => {
    const now = Math.floor(Date.now() / 1000);
    for (const r of entries) {
      const id = randomUUID();
      const key = selectorsKey(r.selectors);
      entry.run(id, r.spiffeId, r.parentId, key, r.x509SvidTtl, r.jwtSvidTtl, '[]', 0, 0, '', 0, 0, now, now);
      for (const s of r.selectors) selector.run(id, s.type, s.value);
      const detail = JSON.stringify({
        spiffe_id: r.spiffeId,
        parent_id: r.parentId,
        selectors: r.selectors.map((s) => `${s.type}:${s.value}`),
        revision_number: 0,
      });
      audit.run(now, 'bench', 'entry.create', 'entry', id, detail);
    }
  });
  const t = timer();
  write();
  const taken = t();
  db.close();
  return taken;
}

async function sampleBatch(n) {
  const { datastore } = await freshStore();
  const entries = newEntries(n, 'batch');
  const t = timer();
  const outcomes = await datastore.createEntries(entries, 'bench');
  const taken = t();
  if (outcomes.some((o) => !('entry' in o))) throw new Error('a benchmark entry was refused');
  await datastore.close();
  return taken;
}

async function sampleSingle(n) {
  const { datastore } = await freshStore();
  const entries = newEntries(n, 'single');
  const t = timer();
  for (const e of entries) await datastore.createEntry(e, 'bench');
  const taken = t();
  await datastore.close();
  return taken;
}

const stats = (xs) => {
  const s = [...xs].sort((x, y) => x - y);
  return { min: s[0], median: s[Math.floor(s.length / 2)], max: s.at(-1) };
};
const fmtRate = ({ min, median, max }) =>
  `${Math.round(median)} entries/s (min ${Math.round(min)}, max ${Math.round(max)})`;
const fmtRatio = ({ min, median, max }) =>
  `median ${median.toFixed(2)} (min ${min.toFixed(2)}, max ${max.toFixed(2)})`;
/** Entries per second of wall time, and of CPU time, of each sample. */
const rates = (n, samples) => ({
  wall: samples.map((s) => (n / s.wall) * 1000),
  cpu: samples.map((s) => (n / s.cpu) * 1000),
});
const ratio = (xs, ys) => stats(xs.map((x, i) => x / ys[i]));

try {
  await sampleRaw(200); // warm-up: module loads, JIT
  await sampleBatch(200);
  const a = [];
  const b = [];
  const c = [];
  for (let round = 0; round < ROUNDS; round++) {
    a.push(await sampleRaw(N));
    b.push(await sampleBatch(N));
    c.push(await sampleSingle(SINGLE_N));
  }
  const [ra, rb, rc] = [rates(N, a), rates(N, b), rates(SINGLE_N, c)];
  console.log(`SQLite (WAL, synchronous=FULL), ${ROUNDS} rounds, A/B/C alternating, a fresh file per sample`);
  console.log(`A  raw better-sqlite3, ${N} entries, one transaction : ${fmtRate(stats(ra.wall))}`);
  console.log(`B  Datastore.createEntries, ${N} entries             : ${fmtRate(stats(rb.wall))}`);
  console.log(`C  Datastore.createEntry x ${SINGLE_N} (one commit each)  : ${fmtRate(stats(rc.wall))}`);
  console.log(`ratio B / A per round, wall: ${fmtRatio(ratio(rb.wall, ra.wall))}   (goal: >= 0.8)`);
  console.log(`ratio B / A per round, CPU : ${fmtRatio(ratio(rb.cpu, ra.cpu))}`);
  console.log(`ratio C / A per round, wall: ${fmtRatio(ratio(rc.wall, ra.wall))}   (the per-entry path)`);
  const bulk = ratio(rb.wall, ra.wall);
  reportFigure({
    figure: `bulk entry creation (${N} entries) ÷ raw better-sqlite3, same durability`,
    ...bulk,
    goal: '≥ 0.8',
    met: bulk.median >= 0.8,
  });
  await benchAuthorize();
  await benchFirstSync();
} finally {
  rmSync(root, { recursive: true, force: true });
}

async function benchAuthorize() {
  const agent = `${TD}/agent/bench`;
  const now = Math.floor(Date.now() / 1000);
  console.log(`\nentry journal authorization of one agent, ${ROUNDS} rounds, D/E alternating`);
  const walks = new Map();
  for (const n of [1000, 10_000, 50_000]) {
    const { datastore } = await freshStore();
    await datastore.createEntries(newEntries(n, `walk${n}`), 'bench');
    const journal = new EntryJournal(datastore, `${TD}/ironroot/server`);
    await journal.refresh();
    const entries = (await journal.authorize(agent, [], now)).entries;
    if (entries.size !== n) throw new Error(`authorized ${entries.size} of ${n} entries`);
    const all = [...entries.values()];
    const d = [];
    const e = [];
    for (let round = 0; round < ROUNDS; round++) {
      let t = timer();
      const floor = new Map();
      for (const entry of all) if (entry.expiresAt === 0 || entry.expiresAt > now) floor.set(entry.id, entry);
      d.push(t().cpu);
      // Node selectors new to each round, so no authorization computed before can answer it.
      const selectors = [{ type: 'bench', value: `round-${n}-${round}` }];
      t = timer();
      journal.authorize(agent, selectors, now);
      journal.authorize(agent, selectors, now);
      e.push(t().cpu);
    }
    // The journal's refresh after a node renewal (no entry changed).
    const renewal = [];
    for (let round = 0; round < 3; round++) {
      await datastore.upsertNode(
        {
          spiffeId: agent,
          attestationType: 'join_token',
          serialNumber: String(round),
          expiresAt: now + 3600,
          selectors: [],
          attestationCount: 1,
          createdAt: now,
        },
        'bench',
      );
      const t = timer();
      await journal.refresh();
      renewal.push(t().wall);
    }
    await datastore.close();
    const ms = ({ min, median, max }) =>
      `${median.toFixed(2)} ms (min ${min.toFixed(2)}, max ${max.toFixed(2)})`;
    console.log(
      `${String(n).padStart(6)} entries: D one pass ${ms(stats(d))}; E two authorizations ${ms(stats(e))}; E / D ${fmtRatio(ratio(e, d))}`,
    );
    console.log(`${' '.repeat(15)}refresh after a node renewal ${ms(stats(renewal))} (3 rounds, wall)`);
    walks.set(n, e);
  }
  // Linear: five times the entries, at most five times the time (per round, both in the same round).
  const growth = ratio(walks.get(50_000), walks.get(10_000));
  reportFigure({
    figure: 'entry journal: authorizing an agent at 50k entries ÷ at 10k',
    ...growth,
    goal: '≤ 5 (linear)',
    met: growth.median <= 5,
  });
}

async function benchFirstSync() {
  const agent = `${TD}/agent/bench`;
  const now = Math.floor(Date.now() / 1000);
  const ms = ({ min, median, max }) =>
    `${median.toFixed(2)} ms (min ${min.toFixed(2)}, max ${max.toFixed(2)})`;
  console.log(`\nfirst sync of one agent after one entry write, ${SYNC_ROUNDS} rounds, F/G alternating`);
  /** G's CPU per round, by entries. */
  const afterWrites = new Map();
  for (const n of SYNC_SIZES) {
    const { datastore } = await freshStore();
    await datastore.createEntries(newEntries(n, `sync${n}`), 'bench');
    const kept = new EntryJournal(datastore, `${TD}/ironroot/server`);
    await kept.refresh();
    let cursor = kept.changes(undefined, kept.authorize(agent, [], now)).cursor;
    const f = [];
    const g = [];
    for (let round = 0; round < SYNC_ROUNDS; round++) {
      let t = timer();
      const reloaded = new EntryJournal(datastore, `${TD}/ironroot/server`);
      await reloaded.refresh();
      const full = reloaded.changes(undefined, reloaded.authorize(agent, [], now));
      f.push(t());
      if (full.entries.length !== n + round) throw new Error(`full sync sent ${full.entries.length} entries`);
      await datastore.createEntry(newEntries(1, `one${n}-${round}`)[0], 'bench');
      t = timer();
      await kept.refresh();
      const one = kept.changes(cursor, kept.authorize(agent, [], now));
      g.push(t());
      if (one.full || one.entries.length !== 1)
        throw new Error('the sync after one write was not that one entry');
      cursor = one.cursor;
    }
    if (kept.loads !== 1) throw new Error(`the kept journal read every entry ${kept.loads} times`);
    await datastore.close();
    const wall = (xs) => xs.map((x) => x.wall);
    const cpu = (xs) => xs.map((x) => x.cpu);
    afterWrites.set(n, cpu(g));
    console.log(
      `${String(n).padStart(6)} entries: F full reload ${ms(stats(wall(f)))}; G after one write ${ms(stats(wall(g)))} (wall)`,
    );
    console.log(
      `${' '.repeat(15)}G / F per round, wall: ${fmtRatio(ratio(wall(g), wall(f)))}; CPU: ${fmtRatio(ratio(cpu(g), cpu(f)))}`,
    );
    if (n === 10_000) {
      const afterWrite = stats(wall(g));
      reportFigure({
        figure: 'first sync of one agent after one entry write at 10k entries, ms',
        ...afterWrite,
        goal: '≤ 1000 ms',
        met: afterWrite.median <= 1000,
        digits: 1,
      });
    }
  }
  // The "agent sync at 50k entries vs 10k": linear is five times the time for five times the
  // entries. CPU time, which the machine's other work colours less than wall time; round i at 50k
  // against round i at 10k, as for the authorization above.
  const [small, large] = [afterWrites.get(10_000), afterWrites.get(50_000)];
  if (small !== undefined && large !== undefined) {
    const growth = ratio(large, small);
    reportFigure({
      figure: 'first sync of one agent after one entry write, CPU at 50k entries ÷ at 10k',
      ...growth,
      goal: '≤ 5 (linear)',
      met: growth.median <= 5,
    });
  }
}
