#!/usr/bin/env node
// What the agent's node flags cost: two real `ironroot-agent run` processes (join-token attested
// against one real server), A with the flags of its bin script's first line (as installed, today
// `--max-semi-space-size=2 --no-opt`) and B with those flags minus `--no-opt` (or
// BENCH_NOOPT_A_FLAGS / BENCH_NOOPT_B_FLAGS), measured at the same moment:
//
// - time from opening a new FetchX509SVID stream to its first response, A and B alternating
//   sample by sample, p50 and p99 per round, with 1 and then 1001 entries cached (the cache scans
//   its entries per stream);
// - the agent's CPU (utime + stime from /proc/<pid>/stat) for a burst of BURST new streams opened
//   at once and answered, A and B alternating which goes first;
// - the agent's CPU and wall time to re-issue its 1001 SVIDs after a CA rotation (both agents
//   re-issue at once, against the same server, so both see the same contention).
//
// Each figure is printed per round and as min / median / max of the ratio A/B over the rounds. The
// server runs in this process from dist/ (memory key manager, development mode). Run after a build
// (`npm run bench:agent-noopt` does both).
import { spawn } from 'node:child_process';
import { existsSync, readFileSync, rmSync } from 'node:fs';
import { request } from 'node:http';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import grpc from '@grpc/grpc-js';
import { benchEntry, startBenchServer } from './lib/bench-server.mjs';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const dist = join(root, 'dist');
if (!existsSync(join(dist, 'server', 'server.js'))) {
  process.stderr.write('bench-agent-noopt: dist/ is missing; run `npx tsc -p tsconfig.build.json` first\n');
  process.exit(1);
}
const ENTRIES = 1000;
const ROUNDS = Number(process.env.BENCH_NOOPT_ROUNDS ?? 5);
const SAMPLES = Number(process.env.BENCH_NOOPT_SAMPLES ?? 1000);
const ROTATIONS = Number(process.env.BENCH_NOOPT_ROTATIONS ?? 3);
const WARMUP = 300;
const BURST = 1000;
/** Well under nghttp2's burst of about 1000 stream resets per connection. */
const RENEW_EVERY = 400;
const TD = 'bench.example.org';
const PATH = '/SpiffeWorkloadAPI/FetchX509SVID';
const flags = (env, fallback) => (process.env[env] ?? fallback.join(' ')).split(' ').filter((f) => f !== '');
const flagsA = flags('BENCH_NOOPT_A_FLAGS', binFlags);
const flagsB = flags(
  'BENCH_NOOPT_B_FLAGS',
  binFlags.filter((f) => f !== '--no-opt'),
);
const raw = (b) => b;
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const TICKS_PER_SECOND = 100;

function get(options) {
  return new Promise((resolve) => {
    const req = request(options, (res) => {
      let body = '';
      res.on('data', (d) => {
        body += d;
      });
      res.on('end', () => resolve(body));
    });
    req.on('error', () => resolve(undefined));
    req.end();
  });
}

async function until(what, check, timeoutMs = 600_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`bench-agent-noopt: timed out waiting for ${what}`);
    await sleep(200);
  }
}

/** CPU seconds (user + system) the process has used so far. */
function cpuSeconds(pid) {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) / TICKS_PER_SECOND;
}

function rssMiB(pid) {
  return Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1]) / 1024;
}

const { dir, server, bundleFile, token, registration } = await startBenchServer(
  dist,
  TD,
  'ironroot-bench-noopt-',
);
const { hashJoinToken } = await import(join(dist, 'server', 'registration', 'service.js'));

/** One agent with `nodeFlags`, attested with a join token of its own, under node alias `node/<name>`. */
async function startAgent(name, nodeFlags, joinToken) {
  const dataDir = join(dir, name);
  const socketPath = join(dir, `${name}.sock`);
  const alias = await server.datastore.createEntry(
    benchEntry({
      spiffeId: `spiffe://${TD}/node/${name}`,
      parentId: `spiffe://${TD}/ironroot/server`,
      selectors: [{ type: 'join_token', value: hashJoinToken(joinToken).slice(0, 12) }],
    }),
    'bench',
  );
  const child = spawn(
    process.execPath,
    [
      ...nodeFlags,
      bin,
      'run',
      '--server-address',
      `127.0.0.1:${server.ports.agentApi}`,
      '--trust-domain',
      TD,
      '--trust-bundle',
      bundleFile,
      '--data-dir',
      dataDir,
      '--socket-path',
      socketPath,
      '--sync-interval',
      '1s',
      '--join-token',
      joinToken,
      '--log-level',
      'warn',
    ],
    { stdio: ['ignore', 'inherit', 'inherit'] },
  );
  const health = async () => {
    const body = await get({ socketPath: join(dataDir, 'agent-health.sock'), path: '/live' });
    try {
      return JSON.parse(body ?? '');
    } catch {
      return undefined;
    }
  };
  return { name, nodeFlags, child, pid: child.pid, socketPath, alias, health };
}

/** A client on a connection of its own. */
function connection(socketPath) {
  return new grpc.Client(`unix://${socketPath}`, grpc.credentials.createInsecure(), {
    'grpc.use_local_subchannel_pool': 1,
    'grpc.max_receive_message_length': -1,
  });
}

function openStream(client) {
  const metadata = new grpc.Metadata();
  metadata.set('workload.spiffe.io', 'true');
  const call = client.makeServerStreamRequest(PATH, raw, raw, Buffer.alloc(0), metadata);
  return new Promise((resolve, reject) => {
    call.once('data', () => resolve(call));
    call.on('error', (e) => {
      if (e.code !== grpc.status.CANCELLED) reject(e);
    });
  });
}

/** New streams to one agent, on a connection replaced every RENEW_EVERY streams. */
class Sampler {
  #count = 0;
  #client;

  constructor(socketPath) {
    this.socketPath = socketPath;
    this.#client = connection(socketPath);
  }

  async sample() {
    if (++this.#count % RENEW_EVERY === 0) {
      this.#client.close();
      this.#client = connection(this.socketPath);
      (await openStream(this.#client)).cancel();
    }
    const started = process.hrtime.bigint();
    const call = await openStream(this.#client);
    const ms = Number(process.hrtime.bigint() - started) / 1e6;
    call.cancel();
    return ms;
  }

  close() {
    this.#client.close();
  }
}

function percentile(sorted, p) {
  return sorted[Math.max(0, Math.ceil((p / 100) * sorted.length) - 1)];
}

function spread(values) {
  const sorted = [...values].sort((a, b) => a - b);
  return { min: sorted[0], median: percentile(sorted, 50), max: sorted[sorted.length - 1] };
}

const f = (n, digits = 3) => n.toFixed(digits);
const line = (label, s, digits = 2) =>
  process.stdout.write(
    `  ${label.padEnd(34)} ${f(s.min, digits)} / ${f(s.median, digits)} / ${f(s.max, digits)}\n`,
  );

async function latency(a, b, label) {
  const sa = new Sampler(a.socketPath);
  const sb = new Sampler(b.socketPath);
  for (let i = 0; i < WARMUP; i++) {
    await sa.sample();
    await sb.sample();
  }
  const rounds = [];
  for (let r = 0; r < ROUNDS; r++) {
    const ta = [];
    const tb = [];
    for (let i = 0; i < SAMPLES; i++) {
      if (i % 2 === 0) {
        ta.push(await sa.sample());
        tb.push(await sb.sample());
      } else {
        tb.push(await sb.sample());
        ta.push(await sa.sample());
      }
    }
    ta.sort((x, y) => x - y);
    tb.sort((x, y) => x - y);
    rounds.push({
      a50: percentile(ta, 50),
      a99: percentile(ta, 99),
      b50: percentile(tb, 50),
      b99: percentile(tb, 99),
    });
  }
  sa.close();
  sb.close();
  process.stdout.write(
    `first response of a new FetchX509SVID stream, ${label} (min / median / max over ${ROUNDS} rounds of ${SAMPLES})\n`,
  );
  line('A p50 ms', spread(rounds.map((r) => r.a50)));
  line('B p50 ms', spread(rounds.map((r) => r.b50)));
  line('A p99 ms', spread(rounds.map((r) => r.a99)));
  line('B p99 ms', spread(rounds.map((r) => r.b99)));
  line('ratio A/B p50', spread(rounds.map((r) => r.a50 / r.b50)));
  line('ratio A/B p99', spread(rounds.map((r) => r.a99 / r.b99)));
}

/** Agent CPU seconds to answer BURST streams opened at once (100 per batch). */
async function burst(agent) {
  const client = connection(agent.socketPath);
  await openStream(client).then((call) => call.cancel());
  const before = cpuSeconds(agent.pid);
  const calls = [];
  for (let i = 0; i < BURST; i += 100)
    calls.push(...(await Promise.all(Array.from({ length: 100 }, () => openStream(client)))));
  const used = cpuSeconds(agent.pid) - before;
  for (const call of calls) call.cancel();
  client.close();
  await sleep(1500);
  return used;
}

async function bursts(a, b) {
  const rounds = [];
  for (let r = 0; r < ROUNDS; r++) {
    const sample = {};
    for (const agent of r % 2 === 0 ? [a, b] : [b, a]) sample[agent.name] = await burst(agent);
    rounds.push(sample);
  }
  process.stdout.write(
    `agent CPU for ${BURST} new streams opened at once (seconds; min / median / max over ${ROUNDS} rounds)\n`,
  );
  line('A', spread(rounds.map((r) => r.a)));
  line('B', spread(rounds.map((r) => r.b)));
  line('ratio A/B', spread(rounds.map((r) => r.a / r.b)));
}

async function rotations(a, b) {
  const issued = async (agent) => (await agent.health())?.workload?.svids_issued ?? 0;
  const rounds = [];
  for (let r = 0; r < ROTATIONS; r++) {
    const start = { a: await issued(a), b: await issued(b) };
    const cpu = { a: cpuSeconds(a.pid), b: cpuSeconds(b.pid) };
    const started = performance.now();
    await server.ca.prepare('x509', 'bench');
    await server.ca.activate('x509', 'bench');
    const sample = {};
    await Promise.all(
      [a, b].map(async (agent) => {
        await until(
          `${agent.name} re-issuing`,
          async () => (await issued(agent)) >= start[agent.name] + ENTRIES + 1,
        );
        sample[agent.name] = {
          cpu: cpuSeconds(agent.pid) - cpu[agent.name],
          wall: (performance.now() - started) / 1000,
        };
      }),
    );
    rounds.push(sample);
    await sleep(3000);
  }
  process.stdout.write(
    `CA rotation: each agent re-issues its ${ENTRIES + 1} SVIDs, both at once (seconds; min / median / max over ${ROTATIONS} rotations)\n`,
  );
  line('A agent CPU', spread(rounds.map((r) => r.a.cpu)));
  line('B agent CPU', spread(rounds.map((r) => r.b.cpu)));
  line('ratio A/B CPU', spread(rounds.map((r) => r.a.cpu / r.b.cpu)));
  line('A wall', spread(rounds.map((r) => r.a.wall)));
  line('B wall', spread(rounds.map((r) => r.b.wall)));
  line('ratio A/B wall', spread(rounds.map((r) => r.a.wall / r.b.wall)));
}

const second = await registration.createJoinToken({ ttl: 600, spiffe_id: '' }, 'bench');
const a = await startAgent('a', flagsA, token.value);
const b = await startAgent('b', flagsB, second.value);
try {
  process.stdout.write(
    `node ${process.version}; A: ${flagsA.join(' ') || '(no flags)'}; B: ${flagsB.join(' ') || '(no flags)'}\n`,
  );
  for (const agent of [a, b]) {
    await until(
      `agent ${agent.name} to attest and serve`,
      async () => (await agent.health())?.state === 'healthy',
    );
    await server.datastore.createEntry(
      benchEntry({
        spiffeId: `spiffe://${TD}/bench/${agent.name}`,
        parentId: agent.alias.spiffeId,
        selectors: [{ type: 'unix', value: `uid:${process.getuid()}` }],
        x509SvidTtl: 3600,
      }),
      'bench',
    );
  }
  for (const agent of [a, b])
    await until(`agent ${agent.name} SVID`, async () => (await agent.health())?.workload?.svids >= 1);
  await latency(a, b, '1 entry cached');
  for (const agent of [a, b])
    for (let i = 0; i < ENTRIES; i++)
      await server.datastore.createEntry(
        benchEntry({
          spiffeId: `spiffe://${TD}/workload/${agent.name}/${i}`,
          parentId: agent.alias.spiffeId,
          selectors: [{ type: 'unix', value: `uid:${200_000 + i}` }],
          x509SvidTtl: 3600,
        }),
        'bench',
      );
  for (const agent of [a, b])
    await until(
      `agent ${agent.name}: ${ENTRIES + 1} SVIDs`,
      async () => (await agent.health())?.workload?.svids >= ENTRIES + 1,
    );
  await sleep(3000);
  await latency(a, b, `${ENTRIES + 1} entries cached`);
  await bursts(a, b);
  await rotations(a, b);
  await sleep(5000);
  process.stdout.write(
    `RSS after the runs (MiB; bench:agent-rss is the memory figure): A ${f(rssMiB(a.pid), 1)}, B ${f(rssMiB(b.pid), 1)}\n`,
  );
} finally {
  for (const agent of [a, b]) {
    agent.child.kill('SIGTERM');
    await new Promise((resolve) => agent.child.once('exit', resolve));
  }
  await server.stop();
  rmSync(dir, { recursive: true, force: true });
}
