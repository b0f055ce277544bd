#!/usr/bin/env node
// Agent event-loop stalls: the longest event-loop delay of a real `ironroot-agent run` process
// holding 1000 cached workload X.509-SVIDs, (a) over idle sync rounds and (b) while a CA rotation
// has it re-issue all 1000, each as a ratio against a bare node process measuring its own loop the
// same way over the same window (the machine's noise floor at that moment). Run after a build
// (`npm run bench:agent-stall` does both). The server runs in this process from dist/ (memory key
// manager, development mode); the agent and the bare process are children of their own.
//
// The agent's figure is `ironroot_agent_nodejs_eventloop_lag_max_seconds` from its /metrics:
// prom-client's monitorEventLoopDelay histogram, reset at every scrape, so a scrape before and one
// after a window give the window's longest stall. The same scrapes read the agent's
// `process_cpu_seconds_total`, so each rotation window also reports the agent's CPU for the re-issue,
// a figure the machine's scheduling noise colours less than the longest stall.
//
// (c) repeats the rotation with BENCH_STALL_BUSY (default 2) busy-looping node processes competing for
// the cores, so "under load" is a condition the run sets up, not whatever else the machine is doing.
//
// The agent runs with the node flags of its bin script's first line, as an installed agent does.
// BENCH_AGENT_NODE_FLAGS replaces them, as in bench:agent-rss and bench:agent-noopt (e.g.
// `--max-semi-space-size=2 --no-opt --cpu-prof --cpu-prof-dir=/tmp/prof` to see what the stalls
// are made of). It also runs at the `Nice=` of the agent's systemd unit, as an installed agent does,
// and so does the bare process, so both sides of the ratio get the same priority against the busy
// processes (which run at 0); BENCH_AGENT_NICE replaces it (0: the default priority). A negative
// value needs root; without it both run at 0, and the run says so.
import { spawn } from 'node:child_process';
import { existsSync, rmSync } from 'node:fs';
import { createServer, request } from 'node:http';
import { getPriority } from 'node:os';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { agentBin, agentBinFlags, agentUnitNice } from './lib/agent-bin.mjs';
import { reportFigure } from './lib/bench-figure.mjs';
import { benchEntry, startBenchServer } from './lib/bench-server.mjs';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const dist = join(root, 'dist');
if (!existsSync(join(dist, 'server', 'server.js'))) {
  process.stderr.write('bench-agent-stall: dist/ is missing; run `npx tsc -p tsconfig.build.json` first\n');
  process.exit(1);
}
const ENTRIES = 1000;
const IDLE_ROUNDS = Number(process.env.BENCH_STALL_IDLE_ROUNDS ?? 7);
const ROTATION_ROUNDS = Number(process.env.BENCH_STALL_ROTATION_ROUNDS ?? 3);
const BUSY_PROCESSES = Number(process.env.BENCH_STALL_BUSY ?? 2);
/** Long enough for at least two sync rounds at the 1 s interval the agent runs with. */
const IDLE_WINDOW_MS = 2500;
const TD = 'bench.example.org';

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function freePort() {
  const probe = createServer();
  await new Promise((resolve) => probe.listen(0, '127.0.0.1', resolve));
  const { port } = probe.address();
  await new Promise((resolve) => probe.close(resolve));
  return port;
}

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
    if (Date.now() > deadline) throw new Error(`bench-agent-stall: timed out waiting for ${what}`);
    await sleep(200);
  }
}

/** The bare process: the same histogram (node's default 10 ms resolution, as prom-client's); a line in, its max out, then reset. */
const BARE = `
const { monitorEventLoopDelay } = require('node:perf_hooks');
const h = monitorEventLoopDelay();
h.enable();
require('node:readline').createInterface({ input: process.stdin }).on('line', () => {
  process.stdout.write(String(h.max / 1e9) + '\\n');
  h.reset();
});
`;

const { dir, server, bundleFile, token, createTokenAlias } = await startBenchServer(
  dist,
  TD,
  'ironroot-bench-stall-',
);

const dataDir = join(dir, 'agent');
const metricsPort = await freePort();
// Through nice(1), so that every thread of the process (V8's and libuv's too) has the priority,
// as under systemd's Nice=; setpriority() on a running process would reach only its main thread.
const nice = Number(process.env.BENCH_AGENT_NICE ?? agentUnitNice);
const agent = spawn(
  'nice',
  [
    '-n',
    String(nice),
    process.execPath,
    ...(process.env.BENCH_AGENT_NODE_FLAGS ?? agentBinFlags.join(' '))
      .split(' ')
      .filter((flag) => flag !== ''),
    agentBin,
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
    join(dir, 'run', 'agent.sock'),
    '--sync-interval',
    '1s',
    '--join-token',
    token.value,
    '--metrics-address',
    `127.0.0.1:${metricsPort}`,
    '--log-level',
    process.env.BENCH_AGENT_LOG_LEVEL ?? 'warn',
  ],
  { stdio: ['ignore', 'inherit', 'inherit'] },
);
const bare = spawn('nice', ['-n', String(nice), process.execPath, '-e', BARE], {
  stdio: ['pipe', 'pipe', 'inherit'],
});
const bareLines = createInterface({ input: bare.stdout });
const bareAnswers = [];
bareLines.on('line', (line) => bareAnswers.shift()?.(Number(line)));

/** The bare process's longest delay since the last ask, in seconds. */
function bareMax() {
  return new Promise((resolve) => {
    bareAnswers.push(resolve);
    bare.stdin.write('\n');
  });
}

/** The values of `names` from one scrape of the agent's /metrics (one scrape: it resets the lag histogram). */
async function metrics(...names) {
  const text = await get({ host: '127.0.0.1', port: metricsPort, path: '/metrics' });
  const lines = text?.split('\n') ?? [];
  return names.map((name) => {
    const line = lines.find((l) => l.startsWith(`${name} `) || l.startsWith(`${name}{`) || l === name);
    return line === undefined ? Number.NaN : Number(line.split(' ').at(-1));
  });
}

/**
 * Reads (and resets) both histograms at the same moment: the window's longest stalls, in seconds;
 * and the agent's CPU seconds so far, so a window's CPU is the difference of two readings.
 */
async function both() {
  const [[agentMax, agentCpu], bareValue] = await Promise.all([
    metrics('ironroot_agent_nodejs_eventloop_lag_max_seconds', 'ironroot_agent_process_cpu_seconds_total'),
    bareMax(),
  ]);
  return { agent: agentMax, bare: bareValue, cpu: agentCpu };
}

async function workloadSvids() {
  const body = await get({ socketPath: join(dataDir, 'agent-health.sock'), path: '/live' });
  try {
    return JSON.parse(body ?? '');
  } catch {
    return undefined;
  }
}

function summary(label, samples) {
  const fmt = (values) => {
    const sorted = [...values].sort((a, b) => a - b);
    return [sorted[0], sorted[Math.floor(sorted.length / 2)], sorted.at(-1)];
  };
  const ms = (v) => (v * 1000).toFixed(1).padStart(7);
  const [aMin, aMed, aMax] = fmt(samples.map((s) => s.agent));
  const [bMin, bMed, bMax] = fmt(samples.map((s) => s.bare));
  const [rMin, rMed, rMax] = fmt(samples.map((s) => s.agent / s.bare));
  process.stdout.write(
    `${label} (${samples.length} windows; min / median / max)\n` +
      `  agent max delay (ms)  ${ms(aMin)} ${ms(aMed)} ${ms(aMax)}\n` +
      `  bare  max delay (ms)  ${ms(bMin)} ${ms(bMed)} ${ms(bMax)}\n` +
      `  ratio agent/bare      ${rMin.toFixed(2).padStart(7)} ${rMed.toFixed(2).padStart(7)} ${rMax.toFixed(2).padStart(7)}\n`,
  );
  reportFigure({
    figure: `agent event-loop stall ms, ${label}`,
    min: aMin * 1000,
    median: aMed * 1000,
    max: aMax * 1000,
    goal: '≤ 50 ms',
    met: aMed * 1000 <= 50,
    digits: 1,
  });
}

// Progress from the health socket: a /metrics scrape would reset the histogram mid-window.
const issued = async () => (await workloadSvids())?.workload?.svids_issued ?? 0;

/** ROTATION_ROUNDS CA rotations, one window each, from `prepare` until every SVID is re-issued. */
async function rotate() {
  const windows = [];
  for (let i = 0; i < ROTATION_ROUNDS; i++) {
    const before = await issued();
    const start = await both();
    const started = performance.now();
    await server.ca.prepare('x509', 'bench');
    await server.ca.activate('x509', 'bench');
    await until('every SVID re-issued under the new CA', async () => (await issued()) >= before + ENTRIES);
    const sample = await both();
    sample.seconds = (performance.now() - started) / 1000;
    sample.cpuSeconds = sample.cpu - start.cpu;
    windows.push(sample);
    await sleep(2000);
  }
  return windows;
}

function reissues(windows) {
  process.stdout.write(
    `(re-issue took ${windows.map((r) => r.seconds.toFixed(1)).join(', ')} s, ` +
      `agent CPU ${windows.map((r) => r.cpuSeconds.toFixed(2)).join(', ')} s; delay resolution 10 ms)\n`,
  );
}

try {
  await until('the agent to attest and serve', async () => {
    const s = await workloadSvids();
    return s?.state === 'healthy' && s.workload?.socket_path ? s : undefined;
  });
  // nice(1) runs the command at the priority it has when it may not set the one asked for.
  console.log(
    `agent at nice ${getPriority(agent.pid)}, bare process at nice ${getPriority(bare.pid)} (asked: ${nice}); busy processes at 0`,
  );
  const alias = await createTokenAlias();
  for (let i = 0; i < ENTRIES; i++)
    await server.datastore.createEntry(
      benchEntry({
        spiffeId: `spiffe://${TD}/workload/${i}`,
        parentId: alias.spiffeId,
        selectors: [{ type: 'unix', value: `uid:${200_000 + i}` }],
        x509SvidTtl: 3600,
      }),
      'bench',
    );
  await until(
    `${ENTRIES} cached SVIDs`,
    async () => ((await workloadSvids())?.workload?.svids ?? 0) >= ENTRIES,
  );
  await sleep(3000);

  const idle = [];
  await both();
  for (let i = 0; i < IDLE_ROUNDS; i++) {
    await sleep(IDLE_WINDOW_MS);
    idle.push(await both());
  }

  const rotations = await rotate();
  const busy = Array.from({ length: BUSY_PROCESSES }, () =>
    spawn(process.execPath, ['-e', 'for (;;);'], { stdio: 'ignore' }),
  );
  let loaded;
  try {
    await sleep(1000);
    loaded = await rotate();
  } finally {
    for (const child of busy) child.kill('SIGKILL');
  }

  summary(
    `idle sync rounds, ${ENTRIES} cached SVIDs, ${IDLE_WINDOW_MS} ms windows at a 1 s sync interval`,
    idle,
  );
  summary(`CA rotation re-issuing ${ENTRIES} SVIDs (one window per rotation)`, rotations);
  reissues(rotations);
  summary(
    `CA rotation re-issuing ${ENTRIES} SVIDs, ${BUSY_PROCESSES} busy processes competing for the cores`,
    loaded,
  );
  reissues(loaded);
} finally {
  bare.stdin.end();
  agent.kill('SIGTERM');
  await new Promise((resolve) => agent.once('exit', resolve));
  await server.stop();
  rmSync(dir, { recursive: true, force: true });
}
