#!/usr/bin/env node
// Agents per server: one real ironroot server (CA key on SoftHSM2, SQLite datastore, from dist/) and
// N simulated agents syncing every `--interval` seconds. For each N: the server's CPU per agent sync
// round and the round's latency p50/p99, against a bare mTLS grpc-js server answering the same
// calls with the same bytes, A/B interleaved (windows of real and bare alternate, several rounds,
// min/median/max), and the N at which one round of every agent no longer fits in the interval.
//
// Processes: this one only directs and measures. The real server, the bare server and the agents
// (split over `--agent-processes` children) each run in their own process, so a server's CPU
// (getrusage: every thread, SoftHSM's and SQLite's included) is its own.
//
// What a simulated agent is, and is not:
// - Real agent client code: its key and CSR are made by src/spiffe, it attests with a join token
//   through AttestAgent (the server mints its agent SVID with the HSM key, writes the node), and
//   syncs with the agent's own WorkloadSync round (src/agent/sync.ts: FetchEntries by cursor,
//   FetchBundles, BatchNewX509SVID for what is due) into its own SvidCache, over one AgentApiClient
//   kept across rounds, as the real sync loop keeps one (src/agent/kept-client.ts). After a round it
//   sleeps the interval, as the real loop does. It has `--entries-per-agent` workload entries whose
//   SVIDs it fetched before the measurement (the first, full sync).
// - Not simulated: the Workload API and workload attestation (no load on the server), writing the
//   cache and bundle to disk (agent-local), and agent SVID renewal (1 h TTL, at half-life: none fall
//   due in a run of minutes; a renewal costs the server about one attestation). Join-token agents
//   open no Reattest stream (TPM agents do). Agents share one AgentMetrics per process (metrics
//   stay agent-local; 5000 registries with default collectors would only slow the client side).
// - All agents connect from 127.0.0.1, so the attestation rate limit is raised to its maximum.
// The bare baseline: a grpc-js server on grpc-js's own TLS listener (mTLS, agent SVIDs verified
// against the same bundle, a server certificate from the same CA; the real server ends TLS with
// node:tls itself and hands connections to grpc-js, the same OpenSSL handshake either way), the same
// service definition, answering FetchEntries and FetchBundles with the messages the real server sent
// an agent in its steady state, recorded once; no authentication beyond TLS, no datastore.
//
// Usage: npm run bench:scale -- [--agents 10,100,1000,5000] [--interval 5] [--window 10]
//   [--rounds 3] [--entries-per-agent 2] [--agent-processes 2] [--profile DIR]
// `--profile DIR` runs the real server under `node --cpu-prof` and writes its profile into DIR.
import { X509Certificate } from 'node:crypto';
import { existsSync, rmSync } from 'node:fs';
import { loadavg } from 'node:os';
import { dirname, join } from 'node:path';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { reportFigure } from './lib/bench-figure.mjs';
import { child, serve } from './lib/bench-rpc.mjs';

const self = fileURLToPath(import.meta.url);
const dist = join(dirname(self), '..', 'dist');
if (!existsSync(join(dist, 'server', 'server.js'))) {
  process.stderr.write('bench-scale: dist/ is missing; run `npx tsc -p tsconfig.build.json` first\n');
  process.exit(1);
}
const TD = 'bench.example.org';

const { values: flags } = parseArgs({
  options: {
    role: { type: 'string', default: 'main' },
    agents: { type: 'string', default: '10,100,1000,5000' },
    interval: { type: 'string', default: '5' },
    window: { type: 'string' },
    rounds: { type: 'string', default: '3' },
    'entries-per-agent': { type: 'string', default: '2' },
    'agent-processes': { type: 'string', default: '2' },
    profile: { type: 'string' },
  },
});

/**
 * A server's CPU milliseconds so far (getrusage of its process: every thread, SoftHSM's and
 * SQLite's included), its event loop's busy fraction since the last call, and how late its event
 * loop ran timers since then (p99 and max, ms): one long task shows there, not in the busy fraction.
 */
let lastElu = performance.eventLoopUtilization();
let loopDelay;
function usage() {
  if (loopDelay === undefined) {
    loopDelay = monitorEventLoopDelay({ resolution: 10 });
    loopDelay.enable();
  }
  const { user, system } = process.cpuUsage();
  const now = performance.eventLoopUtilization();
  const elu = performance.eventLoopUtilization(now, lastElu).utilization;
  lastElu = now;
  const delay = { p99: loopDelay.percentile(99) / 1e6, max: loopDelay.max / 1e6 };
  loopDelay.reset();
  // atUs: the monotonic clock V8's profiler stamps its samples with, to find the windows in a profile.
  return { cpuMs: (user + system) / 1000, elu, delay, atUs: Number(process.hrtime.bigint() / 1000n) };
}

// ---------------------------------------------------------------------------------------------
// The real server: SoftHSM2 token, SQLite in its data_dir.
async function realServer() {
  const { benchToken, SOFTHSM_MODULE } = await import('./lib/softhsm-token.mjs');
  const { benchJoinTokens, createBenchWorkloads, startBenchServer } = await import('./lib/bench-server.mjs');
  const { newKeyPair, SpiffeId } = await import(join(dist, 'spiffe', 'index.js'));
  const token = benchToken('ironroot-bench-scale-hsm-');
  const { dir, server, bundlePem, registration } = await startBenchServer(dist, TD, 'ironroot-bench-scale-', {
    key_manager: `pkcs11:token=bench;module-path=${SOFTHSM_MODULE};pin-source=file:${token.pinFile}`,
    development: false,
    attestation_rate_limit: { per_second: 10_000, burst: 10_000 },
  });
  serve({
    info: () => ({ address: `127.0.0.1:${server.ports.agentApi}`, bundlePem }),
    tokens: ({ count }) => benchJoinTokens(registration, count),
    // Workload entries parented to each agent.
    entries: ({ agentIds, perAgent }) => createBenchWorkloads(server.datastore, TD, agentIds, perAgent),
    // The bare server's certificate: the real server's SPIFFE ID, from the same CA, its own key.
    bareIdentity: async () => {
      const { privateKey, publicKey } = newKeyPair('ec', { namedCurve: 'P-256' });
      const svid = await server.ca.mintX509Svid({
        spiffeId: SpiffeId.parse(`spiffe://${TD}/ironroot/server`),
        publicKey,
        ttl: 3600,
      });
      return {
        chainPem: svid.chain.map((c) => c.toString()).join(''),
        keyPem: privateKey.export({ format: 'pem', type: 'pkcs8' }).toString(),
      };
    },
    usage,
    stop: async () => {
      await server.stop();
      rmSync(dir, { recursive: true, force: true });
      rmSync(token.dir, { recursive: true, force: true });
      // Exits from here so that --cpu-prof writes its profile.
      setImmediate(() => process.exit(0));
    },
  });
}

// ---------------------------------------------------------------------------------------------
// The bare baseline: mTLS grpc-js, the same service, recorded answers.
async function bareServer() {
  const { Server, ServerCredentials } = await import('@grpc/grpc-js');
  const { agentService } = await import(join(dist, 'agent-api', 'proto.js'));
  const grpc = new Server();
  let answers;
  serve({
    start: async ({ bundlePem, chainPem, keyPem }) => {
      grpc.addService(agentService().service, {
        FetchEntries: (call) => {
          for (const page of answers.pages) call.write(page);
          call.end();
        },
        FetchBundles: (_call, callback) => callback(null, answers.bundles),
      });
      const creds = ServerCredentials.createSsl(
        Buffer.from(bundlePem),
        [{ cert_chain: Buffer.from(chainPem), private_key: Buffer.from(keyPem) }],
        true,
      );
      const port = await new Promise((resolve, reject) =>
        grpc.bindAsync('127.0.0.1:0', creds, (error, p) => (error ? reject(error) : resolve(p))),
      );
      return `127.0.0.1:${port}`;
    },
    answers: (message) => {
      answers = message.answers;
    },
    usage,
    stop: async () => {
      await new Promise((resolve) => grpc.tryShutdown(resolve));
      setImmediate(() => process.exit(0));
    },
  });
}

// ---------------------------------------------------------------------------------------------
// A share of the simulated agents.
async function agents() {
  const { credentials } = await import('@grpc/grpc-js');
  const { pino } = await import('pino');
  const { AgentApiClient } = await import(join(dist, 'agent', 'client.js'));
  const { SvidCache } = await import(join(dist, 'agent', 'cache.js'));
  const { WorkloadSync } = await import(join(dist, 'agent', 'sync.js'));
  const { AgentMetrics } = await import(join(dist, 'agent', 'metrics.js'));
  const { agentService } = await import(join(dist, 'agent-api', 'proto.js'));
  const { attestJoinTokenAgent } = await import('./lib/bench-server.mjs');
  const logger = pino({ level: 'silent' });
  const all = [];
  const metrics = new AgentMetrics({ soonestExpiryMs: () => undefined, entryCount: () => 0 });
  let real;
  let roots;

  const workloadSync = () => {
    const cache = new SvidCache({
      trustDomain: TD,
      attestors: [],
      bootstrapRoots: roots,
      mintJwt: async () => {
        throw new Error('no JWT-SVIDs in this benchmark');
      },
      observer: metrics,
    });
    return new WorkloadSync(cache, logger, metrics);
  };
  const open = (address, identity) =>
    new AgentApiClient({ address, trustDomain: TD, bundlePem: real.bundlePem, identity });

  /** Runs `task` over `items`, `width` at a time. */
  async function pool(items, width, task) {
    let next = 0;
    await Promise.all(
      Array.from({ length: Math.min(width, items.length) }, async () => {
        while (next < items.length) await task(items[next++]);
      }),
    );
  }

  serve({
    // Join-token attestation, as the agent does it on first start.
    attest: async ({ target, tokens }) => {
      real = target;
      roots = [new X509Certificate(target.bundlePem)];
      const bootstrap = new AgentApiClient({
        address: target.address,
        trustDomain: TD,
        bundlePem: target.bundlePem,
      });
      await pool(tokens, 8, async (value) => {
        const { id, identity } = await attestJoinTokenAgent(dist, bootstrap, TD, value);
        all.push({
          id,
          identity,
          real: open(target.address, identity),
          realSync: workloadSync(),
        });
      });
      bootstrap.close();
      return all.map((a) => a.id);
    },
    // The first round against each server: the real one's is the full sync that issues the SVIDs;
    // both make the connection the measured rounds then keep.
    warm: async ({ bareAddress }) => {
      await pool(all, 16, async (agent) => {
        if (bareAddress === undefined) await agent.realSync.run(agent.real);
        else {
          agent.bare = open(bareAddress, agent.identity);
          agent.bareSync = workloadSync();
          await agent.bareSync.run(agent.bare);
        }
      });
      return all.reduce((n, a) => n + a.realSync.stats.svids_issued, 0);
    },
    // What the real server answers an agent in its steady state, as the messages it decoded to.
    record: async () => {
      const agent = all[0];
      const { cursor } = await agent.real.fetchEntries(undefined);
      const Ctor = agentService();
      const raw = new Ctor(
        real.address,
        credentials.createSsl(
          Buffer.from(real.bundlePem),
          Buffer.from(agent.identity.keyPem),
          Buffer.from(agent.identity.chainPem),
          { checkServerIdentity: () => undefined },
        ),
        { 'grpc.ssl_target_name_override': TD },
      );
      const pages = [];
      for await (const page of raw.FetchEntries({ cursor })) pages.push(page);
      const bundles = await new Promise((resolve, reject) =>
        raw.FetchBundles({}, (error, response) => (error ? reject(error) : resolve(response))),
      );
      raw.close();
      const { service } = Ctor;
      return {
        pages,
        bundles,
        bytes: {
          fetchEntries: pages.reduce((n, p) => n + service.FetchEntries.responseSerialize(p).length, 0),
          fetchBundles: service.FetchBundles.responseSerialize(bundles).length,
        },
      };
    },
    // Every agent syncs against `target` every `interval` seconds (after its round, as the real
    // loop sleeps), starting at a random point of the first interval, until `seconds` have passed.
    window: async ({ target, seconds, interval }) => {
      const latencies = [];
      let failures = 0;
      const cpu = process.cpuUsage();
      const end = performance.now() + seconds * 1000;
      const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
      await Promise.all(
        all.map(async (agent) => {
          await sleep(Math.random() * interval * 1000);
          while (performance.now() < end) {
            const started = performance.now();
            try {
              if (target === 'real') await agent.realSync.run(agent.real);
              else await agent.bareSync.run(agent.bare);
              latencies.push(performance.now() - started);
            } catch {
              failures++;
            }
            await sleep(interval * 1000);
          }
        }),
      );
      const used = process.cpuUsage(cpu);
      return { latencies, failures, clientCpuMs: (used.user + used.system) / 1000 };
    },
    stop: async () => {
      for (const agent of all) {
        agent.real.close();
        agent.bare?.close();
      }
      setImmediate(() => process.exit(0));
    },
  });
}

// ---------------------------------------------------------------------------------------------
const sorted = (xs) => [...xs].sort((a, b) => a - b);
const quantile = (xs, q) => {
  const s = sorted(xs);
  return s.length === 0 ? Number.NaN : s[Math.min(s.length - 1, Math.floor(q * s.length))];
};
const stats = (xs) => ({ min: Math.min(...xs), median: quantile(xs, 0.5), max: Math.max(...xs) });
const fmt = ({ min, median, max }, digits = 2) =>
  `${median.toFixed(digits)} (${min.toFixed(digits)}–${max.toFixed(digits)})`;

async function main() {
  const sizes = flags.agents.split(',').map(Number);
  const interval = Number(flags.interval);
  const window = Number(flags.window ?? 2 * interval);
  const rounds = Number(flags.rounds);
  const perAgent = Number(flags['entries-per-agent']);
  const processes = Number(flags['agent-processes']);
  const results = [];
  process.stdout.write(
    `bench:scale: ${interval} s sync interval, windows of ${window} s, ${rounds} rounds real/bare interleaved, ` +
      `${perAgent} workload entries per agent, agents in ${processes} processes; load average ${loadavg()
        .map((n) => n.toFixed(1))
        .join(' ')}\n`,
  );
  for (const n of sizes) {
    // A fresh pair of servers per size: no agents of the last size left connected.
    const server = child(
      self,
      'server',
      flags.profile && n === Math.max(...sizes) ? ['--cpu-prof', '--cpu-prof-dir', flags.profile] : [],
    );
    const bare = child(self, 'bare');
    const shards = Array.from({ length: Math.min(processes, n) }, () => child(self, 'agents'));
    try {
      const target = await server.call('info');
      let t = performance.now();
      const tokens = await server.call('tokens', { count: n });
      const ids = (
        await Promise.all(
          shards.map((s, i) =>
            s.call('attest', { target, tokens: tokens.filter((_, k) => k % shards.length === i) }),
          ),
        )
      ).flat();
      const attestSeconds = (performance.now() - t) / 1000;
      await server.call('entries', { agentIds: ids, perAgent });
      t = performance.now();
      const issued = (await Promise.all(shards.map((s) => s.call('warm', {})))).reduce((a, b) => a + b, 0);
      const warmSeconds = (performance.now() - t) / 1000;
      const recorded = await shards[0].call('record');
      const bareAddress = await bare.call('start', {
        bundlePem: target.bundlePem,
        ...(await server.call('bareIdentity')),
      });
      await bare.call('answers', { answers: recorded });
      await Promise.all(shards.map((s) => s.call('warm', { bareAddress })));
      process.stdout.write(
        `\n${n} agents: attested in ${attestSeconds.toFixed(1)} s; first sync (${issued} SVIDs issued) in ` +
          `${warmSeconds.toFixed(1)} s; steady-state answers ${recorded.bytes.fetchEntries} B (FetchEntries) + ` +
          `${recorded.bytes.fetchBundles} B (FetchBundles)\n`,
      );

      const samples = { real: [], bare: [] };
      // What each server spends with every agent connected and none syncing (timers, keep-alives),
      // in its own window of each round, real and bare in the round's order.
      const idleSeconds = Math.min(window, 5);
      const idle = { real: [], bare: [] };
      const measureIdle = async (kind) => {
        const proc = kind === 'real' ? server : bare;
        const before = await proc.call('usage');
        await new Promise((resolve) => setTimeout(resolve, idleSeconds * 1000));
        idle[kind].push(((await proc.call('usage')).cpuMs - before.cpuMs) / idleSeconds);
      };
      const profiled = {};
      const measure = async (kind) => {
        const proc = kind === 'real' ? server : bare;
        const before = await proc.call('usage');
        const t0 = performance.now();
        const parts = await Promise.all(
          shards.map((s) => s.call('window', { target: kind, seconds: window, interval })),
        );
        const wall = performance.now() - t0;
        const after = await proc.call('usage');
        const serverCpu = after.cpuMs - before.cpuMs;
        if (kind === 'real') {
          profiled.from ??= before.atUs;
          profiled.to = after.atUs;
        }
        const latencies = parts.flatMap((p) => p.latencies);
        const syncs = latencies.length;
        samples[kind].push({
          cpuPerSync: serverCpu / syncs,
          p50: quantile(latencies, 0.5),
          p99: quantile(latencies, 0.99),
          syncs,
          failures: parts.reduce((a, p) => a + p.failures, 0),
          cores: serverCpu / wall,
          elu: after.elu,
          delayP99: after.delay.p99,
          delayMax: after.delay.max,
          clientCores: parts.reduce((a, p) => a + p.clientCpuMs, 0) / wall,
        });
      };
      for (let r = 0; r < rounds; r++) {
        const order = r % 2 === 0 ? ['real', 'bare'] : ['bare', 'real'];
        for (const kind of order) await measureIdle(kind);
        for (const kind of order) await measure(kind);
      }
      if (flags.profile && n === Math.max(...sizes))
        process.stdout.write(
          `  profiled: the measurement windows are ${profiled.from}–${profiled.to} µs of the server's profile\n`,
        );
      const pick = (kind, field) => samples[kind].map((s) => s[field]);
      const ratio = (field) => samples.real.map((s, i) => s[field] / samples.bare[i][field]);
      const row = {
        n,
        real: Object.fromEntries(
          ['cpuPerSync', 'p50', 'p99', 'cores', 'elu', 'delayP99', 'delayMax', 'clientCores'].map((f) => [
            f,
            stats(pick('real', f)),
          ]),
        ),
        bare: Object.fromEntries(
          ['cpuPerSync', 'p50', 'p99', 'cores', 'delayP99', 'delayMax', 'clientCores'].map((f) => [
            f,
            stats(pick('bare', f)),
          ]),
        ),
        cpuRatio: stats(ratio('cpuPerSync')),
        idle: {
          real: stats(idle.real),
          bare: stats(idle.bare),
          ratio: stats(idle.real.map((x, i) => x / idle.bare[i])),
        },
        p99Ratio: stats(ratio('p99')),
        failures:
          samples.real.reduce((a, s) => a + s.failures, 0) + samples.bare.reduce((a, s) => a + s.failures, 0),
        syncs: stats(pick('real', 'syncs')),
        expectedSyncs: (n * window) / interval,
      };
      results.push(row);
      process.stdout.write(
        `  idle CPU ms per second, agents connected and none syncing: ironroot ${fmt(row.idle.real)}, bare ${fmt(row.idle.bare)}, ratio ${fmt(row.idle.ratio, 1)}\n` +
          `  server CPU ms per agent sync round: ironroot ${fmt(row.real.cpuPerSync)}, bare ${fmt(row.bare.cpuPerSync)}, ratio ${fmt(row.cpuRatio)}\n` +
          `  sync latency ms: ironroot p50 ${fmt(row.real.p50, 1)} p99 ${fmt(row.real.p99, 1)}; bare p50 ${fmt(row.bare.p50, 1)} p99 ${fmt(row.bare.p99, 1)}; p99 ratio ${fmt(row.p99Ratio)}\n` +
          `  ironroot server: ${fmt(row.real.cores)} cores busy, event loop ${fmt(row.real.elu)} busy; agents' processes ${fmt(row.real.clientCores)} cores\n` +
          `  event loop late by, ms: ironroot p99 ${fmt(row.real.delayP99, 1)} max ${fmt(row.real.delayMax, 1)}; bare p99 ${fmt(row.bare.delayP99, 1)} max ${fmt(row.bare.delayMax, 1)}\n` +
          `  sync rounds per window: ${fmt(row.syncs, 0)} of ~${Math.round(row.expectedSyncs)} at the full rate; failed rounds: ${row.failures}\n`,
      );
    } finally {
      await Promise.allSettled([...shards, bare, server].map((c) => c.call('stop')));
    }
  }

  // Saturation: one round of N agents needs N × (CPU per round); the server's event loop is one
  // thread, so one core bounds it, however many the machine has.
  process.stdout.write('\nsummary (median over rounds):\n');
  process.stdout.write(
    'agents  CPU ms/round  ratio   p50 ms   p99 ms   loop busy  agents at one core (interval ÷ CPU/round)\n',
  );
  for (const r of results) {
    const capacity = (interval * 1000) / r.real.cpuPerSync.median;
    process.stdout.write(
      `${String(r.n).padStart(6)}  ${r.real.cpuPerSync.median.toFixed(2).padStart(12)}  ${r.cpuRatio.median.toFixed(2).padStart(5)}  ` +
        `${r.real.p50.median.toFixed(1).padStart(7)}  ${r.real.p99.median.toFixed(1).padStart(7)}  ${r.real.elu.median.toFixed(2).padStart(9)}  ${Math.round(capacity)}\n`,
    );
  }
  const saturated = results.find((r) => r.real.elu.median > 0.9 || r.syncs.median < 0.9 * r.expectedSyncs);
  process.stdout.write(
    saturated
      ? `saturates at ${saturated.n} agents (event loop > 90 % busy, or fewer than 90 % of the rounds due were made)\n`
      : `no saturation up to ${Math.max(...results.map((r) => r.n))} agents\n`,
  );
  const at100 = results.find((r) => r.n === 100) ?? results[0];
  reportFigure({
    figure: `server CPU per agent sync round at ${at100.n} agents ÷ bare mTLS grpc-js`,
    ...at100.cpuRatio,
    goal: '≤ 1.5',
    met: at100.cpuRatio.median <= 1.5,
  });
  const largest = results.at(-1);
  const capacity = (interval * 1000) / largest.real.cpuPerSync.median;
  reportFigure({
    figure: `agents one server core keeps at a ${interval} s interval (measured up to ${largest.n})`,
    min: (interval * 1000) / largest.real.cpuPerSync.max,
    median: capacity,
    max: (interval * 1000) / largest.real.cpuPerSync.min,
    goal: '≥ 5000',
    met: capacity >= 5000 && (saturated === undefined || saturated.n > 5000),
    digits: 0,
  });
}

if (flags.role === 'server') await realServer();
else if (flags.role === 'bare') await bareServer();
else if (flags.role === 'agents') await agents();
else await main();
