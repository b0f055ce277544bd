#!/usr/bin/env node
// One server vs two on one PostgreSQL: join-token attestations per second and agent sync rounds per
// second, with the agents' load on one server ("one") or split evenly over two ("two"), A/B
// interleaved (the order alternates by round), several rounds, the ratio two ÷ one as
// min/median/max. Both servers run in every window (the second idles in "one"), so the same
// processes compete for the machine either way and only where the agents connect changes.
//
// Processes: this one only directs and measures. Each server (CA key on one SoftHSM2 token both
// open, datastore on one PostgreSQL cluster) and each share of the simulated agents runs in its own
// process, so each server's CPU (getrusage: every thread, SoftHSM's included) is its own.
//
// The simulated agents are scripts/bench-scale.mjs's: real agent client code (src/agent: the key
// and CSR from src/spiffe, AttestAgent with a join token, the agent's own WorkloadSync round into
// its own SvidCache over one AgentApiClient kept across rounds). Here they run closed-loop (the next
// call as soon as one ends, `--in-flight` attestations or every sync agent at once) to find the
// rate the servers sustain, not the latency at a given load:
// - attestations: `--attestations` join tokens (made beforehand, not timed) and as many keys and
//   CSRs (made beforehand too), attested through the target servers (token i to server i mod 2 in
//   "two"); the server checks and consumes the token, writes the node, signs the agent SVID on the HSM.
// - syncs: `--agents` agents, each with `--entries-per-agent` workload entries whose SVIDs it already
//   holds from each server (a first full sync against each, not timed), make `--sync-rounds` rounds
//   each (FetchEntries by cursor, FetchBundles; nothing is due, so no signing), agent i against
//   server i mod 2 in "two". An agent keeps one cache per server: cursors are not carried across.
// PostgreSQL runs on the same machine with fsync on; the sync agents attested once, before the
// measurement; every window's attestations add nodes, in both arms alike.
//
// Usage: npm run bench:ha -- [--rounds 5] [--attestations 200] [--in-flight 16] [--agents 100]
//   [--entries-per-agent 2] [--sync-rounds 5] [--agent-processes 2] [--only one|two] [--profile DIR]
// `--only one|two` measures that arm alone (no ratio, no figure), to profile one arm at a time.
// `--profile DIR` runs both servers under `node --cpu-prof` and writes server-0/1.cpuprofile into DIR.
// Each server also counts the queries it sends PostgreSQL, to tell coordination in the database
// (more queries per operation with two servers) from competition for the CPUs.
import { X509Certificate } from 'node:crypto';
import { existsSync, rmSync } from 'node:fs';
import { cpus, loadavg } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { reportFigure } from './lib/bench-figure.mjs';
import { child, serve } from './lib/bench-rpc.mjs';

const self = fileURLToPath(import.meta.url);
const dist = join(dirname(self), '..', 'dist');
if (!existsSync(join(dist, 'server', 'server.js'))) {
  process.stderr.write('bench-ha: dist/ is missing; run `npx tsc -p tsconfig.build.json` first\n');
  process.exit(1);
}
const TD = 'bench.example.org';

const { values: flags } = parseArgs({
  options: {
    role: { type: 'string', default: 'main' },
    rounds: { type: 'string', default: '5' },
    attestations: { type: 'string', default: '200' },
    'in-flight': { type: 'string', default: '16' },
    agents: { type: 'string', default: '100' },
    'entries-per-agent': { type: 'string', default: '2' },
    'sync-rounds': { type: 'string', default: '5' },
    'agent-processes': { type: 'string', default: '2' },
    profile: { type: 'string' },
    only: { type: 'string' },
  },
});

/** CPU milliseconds of this process since `since` (a process.cpuUsage()), or in all. */
function cpuMs(since) {
  const { user, system } = process.cpuUsage(since);
  return (user + system) / 1000;
}

// ---------------------------------------------------------------------------------------------
// A server: the token named by SOFTHSM2_CONF (inherited from the main process), PostgreSQL.
async function server() {
  const { SOFTHSM_MODULE } = await import('./lib/softhsm-token.mjs');
  const { benchJoinTokens, createBenchWorkloads, startBenchServer } = await import('./lib/bench-server.mjs');
  // Counts the queries this server sends PostgreSQL (every statement, BEGIN and COMMIT included):
  // the datastore's pg is this module, so wrapping its Client's query sees them all.
  const { default: pg } = await import('pg');
  const query = pg.Client.prototype.query;
  let queries = 0;
  pg.Client.prototype.query = function counted(...args) {
    queries++;
    return query.apply(this, args);
  };
  let running;
  serve({
    start: async ({ pinFile, connectionString }) => {
      running = await startBenchServer(dist, TD, 'ironroot-bench-ha-', {
        key_manager: `pkcs11:token=bench;module-path=${SOFTHSM_MODULE};pin-source=file:${pinFile}`,
        development: false,
        datastore: { type: 'postgres', connection_string: connectionString, tls: { mode: 'disable' } },
        // Every simulated agent connects from 127.0.0.1.
        attestation_rate_limit: { per_second: 10_000, burst: 10_000 },
      });
      return { address: `127.0.0.1:${running.server.ports.agentApi}`, bundlePem: running.bundlePem };
    },
    tokens: ({ count }) => benchJoinTokens(running.registration, count),
    // Workload entries parented to each agent.
    entries: ({ agentIds, perAgent }) =>
      createBenchWorkloads(running.server.datastore, TD, agentIds, perAgent),
    usage: () => ({ cpuMs: cpuMs(), queries }),
    stop: async () => {
      await running?.server.stop();
      if (running) rmSync(running.dir, { recursive: true, force: true });
      // Exits from here so that --cpu-prof writes its profile.
      setImmediate(() => process.exit(0));
    },
  });
}

// ---------------------------------------------------------------------------------------------
// A share of the simulated agents.
async function agents() {
  const { pino } = await import('pino');
  const { AgentApiClient } = await import(join(dist, 'agent', 'client.js'));
  const { SvidCache } = await import(join(dist, 'agent', 'cache.js'));
  const { WorkloadSync } = await import(join(dist, 'agent', 'sync.js'));
  const { AgentMetrics } = await import(join(dist, 'agent', 'metrics.js'));
  const { createCsr, createKeySigner, newKeyPair, SpiffeId } = await import(join(dist, 'spiffe', 'index.js'));
  const logger = pino({ level: 'silent' });
  const metrics = new AgentMetrics({ soonestExpiryMs: () => undefined, entryCount: () => 0 });
  let targets;
  let bootstraps;
  let csrs = [];
  const syncing = [];

  const keyAndCsr = async () => {
    const { privateKey } = newKeyPair('ec', { namedCurve: 'P-256' });
    const csr = Buffer.from(
      await createCsr({ spiffeId: SpiffeId.parse(`spiffe://${TD}/agent/csr`) }, createKeySigner(privateKey)),
    );
    return { privateKey, csr };
  };
  const attest = async (server, token, { privateKey, csr }) => {
    const result = await bootstraps[server].attest(
      { method: 'join_token', csr, tpm: null, join_token: token },
      async () => {
        throw new Error('a join token needs no challenge');
      },
    );
    return {
      id: result.spiffe_id,
      identity: {
        keyPem: privateKey.export({ format: 'pem', type: 'pkcs8' }).toString(),
        chainPem: result.svid_chain.map((der) => new X509Certificate(der).toString()).join(''),
      },
    };
  };
  /** Runs `task` over `items`, `width` at a time. */
  async function pool(items, width, task) {
    let next = 0;
    await Promise.all(
      Array.from({ length: Math.min(width, items.length) }, async () => {
        while (next < items.length) {
          const i = next++;
          await task(items[i], i);
        }
      }),
    );
  }
  const workloadSync = () =>
    new WorkloadSync(
      new SvidCache({
        trustDomain: TD,
        attestors: [],
        bootstrapRoots: [new X509Certificate(targets[0].bundlePem)],
        mintJwt: async () => {
          throw new Error('no JWT-SVIDs in this benchmark');
        },
        observer: metrics,
      }),
      logger,
      metrics,
    );

  serve({
    // The sync agents attest through the first server; each opens a kept client to both.
    setup: async ({ servers, tokens }) => {
      targets = servers;
      bootstraps = servers.map(
        (s) => new AgentApiClient({ address: s.address, trustDomain: TD, bundlePem: s.bundlePem }),
      );
      await pool(tokens, 8, async (token) => {
        const { id, identity } = await attest(0, token, await keyAndCsr());
        syncing.push({
          id,
          clients: servers.map(
            (s) =>
              new AgentApiClient({ address: s.address, trustDomain: TD, bundlePem: s.bundlePem, identity }),
          ),
          syncs: servers.map(() => workloadSync()),
        });
      });
      return syncing.map((a) => a.id);
    },
    // The first, full sync against each server: SVIDs issued, the connection made.
    warm: async () => {
      await pool(syncing, 16, async (agent) => {
        for (let s = 0; s < targets.length; s++) await agent.syncs[s].run(agent.clients[s]);
      });
      return syncing.reduce((n, a) => n + a.syncs.reduce((m, s) => m + s.stats.svids_issued, 0), 0);
    },
    prepare: async ({ count }) => {
      csrs = [];
      for (let i = 0; i < count; i++) csrs.push(await keyAndCsr());
    },
    attest: async ({ tokens, servers, width }) => {
      const cpu = process.cpuUsage();
      let failures = 0;
      await pool(tokens, width, async (token, i) => {
        try {
          await attest(i % servers, token, csrs[i]);
        } catch {
          failures++;
        }
      });
      return { done: tokens.length - failures, failures, cpuMs: cpuMs(cpu) };
    },
    sync: async ({ rounds, servers }) => {
      const cpu = process.cpuUsage();
      let done = 0;
      let failures = 0;
      await Promise.all(
        syncing.map(async (agent, i) => {
          const s = i % servers;
          for (let r = 0; r < rounds; r++) {
            try {
              await agent.syncs[s].run(agent.clients[s]);
              done++;
            } catch {
              failures++;
            }
          }
        }),
      );
      return { done, failures, cpuMs: cpuMs(cpu) };
    },
    stop: async () => {
      for (const b of bootstraps ?? []) b.close();
      for (const agent of syncing) for (const c of agent.clients) c.close();
      setImmediate(() => process.exit(0));
    },
  });
}

// ---------------------------------------------------------------------------------------------
const sorted = (xs) => [...xs].sort((a, b) => a - b);
const median = (xs) => sorted(xs)[Math.floor(xs.length / 2)];
const stats = (xs) => ({ min: Math.min(...xs), median: median(xs), max: Math.max(...xs) });
const fmt = ({ min, median: m, max }, digits = 2) =>
  `${m.toFixed(digits)} (${min.toFixed(digits)}–${max.toFixed(digits)})`;

async function main() {
  const rounds = Number(flags.rounds);
  const attestations = Number(flags.attestations);
  const width = Number(flags['in-flight']);
  const agentCount = Number(flags.agents);
  const perAgent = Number(flags['entries-per-agent']);
  const syncRounds = Number(flags['sync-rounds']);
  const processes = Number(flags['agent-processes']);
  if (![undefined, 'one', 'two'].includes(flags.only)) {
    process.stderr.write(`bench-ha: --only takes one or two, not ${flags.only}\n`);
    process.exit(2);
  }
  const { benchToken } = await import('./lib/softhsm-token.mjs');
  const { startPostgres } = await import('./lib/postgres-cluster.mjs');
  process.stdout.write(
    `bench:ha: one vs two servers on one PostgreSQL, ${rounds} rounds interleaved; per window ${attestations} ` +
      `attestations (${width} in flight per agent process) and ${agentCount} agents × ${syncRounds} sync rounds ` +
      `(${perAgent} entries each), agents in ${processes} processes; ${cpus().length} CPUs, load average ${loadavg()
        .map((n) => n.toFixed(1))
        .join(' ')}\n`,
  );
  // SOFTHSM2_CONF is set here and inherited by both servers: one token, its keys shared.
  const token = benchToken('ironroot-bench-ha-hsm-');
  const postgres = await startPostgres({ database: 'ironroot_bench' });
  const servers = [];
  const shards = [];
  try {
    // The first server makes the CA keys on the token and records them; the second opens them.
    const targets = [];
    for (let s = 0; s < 2; s++) {
      const proc = child(
        self,
        'server',
        flags.profile
          ? ['--cpu-prof', '--cpu-prof-dir', flags.profile, '--cpu-prof-name', `server-${s}.cpuprofile`]
          : [],
      );
      servers.push(proc);
      targets.push(
        await proc.call('start', { pinFile: token.pinFile, connectionString: postgres.connectionString }),
      );
    }
    for (let p = 0; p < processes; p++) shards.push(child(self, 'agents'));
    const share = (items, p) => items.filter((_, k) => k % shards.length === p);
    const setupTokens = await servers[0].call('tokens', { count: agentCount });
    const ids = (
      await Promise.all(
        shards.map((s, p) => s.call('setup', { servers: targets, tokens: share(setupTokens, p) })),
      )
    ).flat();
    await servers[0].call('entries', { agentIds: ids, perAgent });
    const issued = (await Promise.all(shards.map((s) => s.call('warm')))).reduce((a, b) => a + b, 0);
    process.stdout.write(`set up: ${ids.length} sync agents, ${issued} SVIDs issued in their first syncs\n`);

    /** Both servers' CPU ms and PostgreSQL queries so far. */
    const usage = async () =>
      (await Promise.all(servers.map((s) => s.call('usage')))).reduce(
        (sum, u) => ({ cpuMs: sum.cpuMs + u.cpuMs, queries: sum.queries + u.queries }),
        { cpuMs: 0, queries: 0 },
      );
    /** Runs `op` on every shard at once: its rate per second, and per operation the servers' CPU ms and queries. */
    const timed = async (op) => {
      const before = await usage();
      const t0 = performance.now();
      const parts = await Promise.all(shards.map((s, p) => op(s, p)));
      const seconds = (performance.now() - t0) / 1000;
      const after = await usage();
      const done = parts.reduce((n, r) => n + r.done, 0);
      return {
        rate: done / seconds,
        cpuPerOp: (after.cpuMs - before.cpuMs) / done,
        queriesPerOp: (after.queries - before.queries) / done,
        agentsCpuPerOp: parts.reduce((n, r) => n + r.cpuMs, 0) / done,
        failures: parts.reduce((n, r) => n + r.failures, 0),
      };
    };
    const samples = { one: [], two: [] };
    const measure = async (arm) => {
      const count = arm === 'one' ? 1 : 2;
      const tokens = await servers[0].call('tokens', { count: attestations });
      await Promise.all(
        shards.map((s) => s.call('prepare', { count: Math.ceil(attestations / shards.length) })),
      );
      const attest = await timed((s, p) =>
        s.call('attest', { tokens: share(tokens, p), servers: count, width }),
      );
      const sync = await timed((s) => s.call('sync', { rounds: syncRounds, servers: count }));
      samples[arm].push({ attest, sync });
      process.stdout.write(
        `  ${arm}: ${attest.rate.toFixed(1)} attestations/s (each: servers ${attest.cpuPerOp.toFixed(2)} ms CPU and ` +
          `${attest.queriesPerOp.toFixed(1)} queries, agents ${attest.agentsCpuPerOp.toFixed(2)} ms), ` +
          `${sync.rate.toFixed(1)} syncs/s (servers ${sync.cpuPerOp.toFixed(2)} ms and ${sync.queriesPerOp.toFixed(2)} queries, ` +
          `agents ${sync.agentsCpuPerOp.toFixed(2)} ms); failed: ${attest.failures + sync.failures}\n`,
      );
    };
    for (let r = 0; r < rounds; r++) {
      process.stdout.write(`round ${r + 1}\n`);
      for (const arm of r % 2 === 0 ? ['one', 'two'] : ['two', 'one'])
        if (flags.only === undefined || flags.only === arm) await measure(arm);
    }
    if (flags.only !== undefined) return;

    const ratio = (kind, field) => samples.two.map((s, i) => s[kind][field] / samples.one[i][kind][field]);
    const pick = (arm, kind, field) => stats(samples[arm].map((s) => s[kind][field]));
    const failures = [...samples.one, ...samples.two].reduce(
      (n, s) => n + s.attest.failures + s.sync.failures,
      0,
    );
    process.stdout.write(
      `\nsummary (median, min–max over ${rounds} rounds):\n` +
        `  attestations/s: one ${fmt(pick('one', 'attest', 'rate'), 1)}, two ${fmt(pick('two', 'attest', 'rate'), 1)}, ` +
        `two ÷ one ${fmt(stats(ratio('attest', 'rate')))}\n` +
        `  servers' CPU ms per attestation: one ${fmt(pick('one', 'attest', 'cpuPerOp'))}, two ${fmt(pick('two', 'attest', 'cpuPerOp'))}; ` +
        `agents' ${fmt(pick('one', 'attest', 'agentsCpuPerOp'))}; servers' two ÷ one ${fmt(stats(ratio('attest', 'cpuPerOp')))}\n` +
        `  PostgreSQL queries per attestation: one ${fmt(pick('one', 'attest', 'queriesPerOp'), 1)}, two ${fmt(pick('two', 'attest', 'queriesPerOp'), 1)}\n` +
        `  syncs/s: one ${fmt(pick('one', 'sync', 'rate'), 1)}, two ${fmt(pick('two', 'sync', 'rate'), 1)}, ` +
        `two ÷ one ${fmt(stats(ratio('sync', 'rate')))}\n` +
        `  servers' CPU ms per sync: one ${fmt(pick('one', 'sync', 'cpuPerOp'))}, two ${fmt(pick('two', 'sync', 'cpuPerOp'))}; ` +
        `agents' ${fmt(pick('one', 'sync', 'agentsCpuPerOp'))}; servers' two ÷ one ${fmt(stats(ratio('sync', 'cpuPerOp')))}\n` +
        `  PostgreSQL queries per sync: one ${fmt(pick('one', 'sync', 'queriesPerOp'))}, two ${fmt(pick('two', 'sync', 'queriesPerOp'))}\n` +
        `  failed calls: ${failures}\n`,
    );
    // Issue 15 sets no number. On a machine where the second server adds no cores, this bar only
    // says that sharing one database costs little; on more cores the ratio is the scale-out.
    for (const [kind, name] of [
      ['attest', 'attestations/s'],
      ['sync', 'agent syncs/s'],
    ]) {
      const figure = stats(ratio(kind, 'rate'));
      reportFigure({
        figure: `${name}, two servers on one PostgreSQL ÷ one server (${cpus().length} CPUs)`,
        ...figure,
        goal: '≥ 0.8',
        met: figure.median >= 0.8 && failures === 0,
      });
    }
  } finally {
    await Promise.allSettled([...shards, ...servers].map((c) => c.call('stop')));
    await postgres.stop();
    rmSync(token.dir, { recursive: true, force: true });
  }
}

if (flags.role === 'server') await server();
else if (flags.role === 'agents') await agents();
else await main();
