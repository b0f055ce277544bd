#!/usr/bin/env node
// Agent memory: the RSS and retained heap of a real `ironroot-agent run` process (join-token
// attested against a real server), idle (0 entries) and holding 1000 cached workload X.509-SVIDs,
// each against a bare `node -e` process measured at the same moment (ratio and absolute MiB). Run
// after a build (`npm run bench:agent-rss` does both). The server runs in this process from dist/
// (memory key manager, development mode); the agent and the bare process are children of their own,
// so each RSS is its own.
//
// Both children preload scripts/lib/memory-probe.cjs, which answers on fd 3 with memoryUsage(), as
// it is or after a full GC. RSS (and its anonymous/file split) is read from /proc/<pid>/status and
// no GC is forced until every RSS sample of a phase is taken: a forced GC returns memory a real
// agent keeps, so it would flatter the RSS. The retained heap is read once at the end of a phase.
//
// The agent runs with the node flags its bin script's `#!/usr/bin/env -S node …` line gives, as an
// installed agent does. BENCH_AGENT_NODE_FLAGS replaces them (e.g. `--max-semi-space-size=16`, or
// `--heapsnapshot-signal=SIGUSR1` to take snapshots by hand); BENCH_RSS_ROUNDS sets the samples;
// BENCH_RSS_HEAPSNAPSHOTS=<dir> has the agent write idle.heapsnapshot and loaded.heapsnapshot there
// at the end of each phase (open them in Chrome DevTools' Memory tab and compare).
import { spawn } from 'node:child_process';
import { existsSync, readFileSync, rmSync } from 'node:fs';
import { request } from 'node:http';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { agentBin as bin, agentBinFlags as binFlags } from './lib/agent-bin.mjs';
import { reportFigure } from './lib/bench-figure.mjs';
import { benchEntry, startBenchServer } from './lib/bench-server.mjs';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const dist = join(root, 'dist');
if (!existsSync(join(dist, 'server', 'server.js'))) {
  process.stderr.write('bench-agent-rss: dist/ is missing; run `npx tsc -p tsconfig.build.json` first\n');
  process.exit(1);
}
const ENTRIES = 1000;
const ROUNDS = Number(process.env.BENCH_RSS_ROUNDS ?? 7);
/** Left alone this long before sampling: several sync rounds, the start-up garbage collected. */
const SETTLE_MS = 15_000;
const SAMPLE_EVERY_MS = 3000;
const TD = 'bench.example.org';
const probe = join(root, 'scripts', 'lib', 'memory-probe.cjs');
const agentFlags = (process.env.BENCH_AGENT_NODE_FLAGS ?? binFlags.join(' '))
  .split(' ')
  .filter((f) => f !== '');

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** A child with the probe preloaded on fd 3: `report(command)` asks for one memoryUsage(). */
function probed(args) {
  const child = spawn(process.execPath, ['--require', probe, ...args], {
    stdio: ['ignore', 'inherit', 'inherit', 'pipe'],
  });
  const waiting = [];
  createInterface({ input: child.stdio[3] }).on('line', (line) => waiting.shift()?.(JSON.parse(line)));
  return {
    child,
    /** `report`: as the process is; `gc`: after a full garbage collection. */
    report: (command) =>
      new Promise((resolve) => {
        waiting.push(resolve);
        child.stdio[3].write(`${command}\n`);
      }),
  };
}

const { dir, server, bundleFile, token, createTokenAlias } = await startBenchServer(
  dist,
  TD,
  'ironroot-bench-rss-',
);
const dataDir = join(dir, 'agent');
const agent = probed([
  ...agentFlags,
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
  join(dir, 'run', 'agent.sock'),
  '--sync-interval',
  '2s',
  '--join-token',
  token.value,
  '--log-level',
  process.env.BENCH_AGENT_LOG_LEVEL ?? 'warn',
]);
const bare = probed(['-e', 'setInterval(() => {}, 1 << 30)']);

function health() {
  return new Promise((resolve) => {
    const req = request({ socketPath: join(dataDir, 'agent-health.sock'), path: '/live' }, (res) => {
      let body = '';
      res.on('data', (d) => {
        body += d;
      });
      res.on('end', () => {
        try {
          resolve(JSON.parse(body));
        } catch {
          resolve(undefined);
        }
      });
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
    if (Date.now() > deadline) throw new Error(`bench-agent-rss: timed out waiting for ${what}`);
    await sleep(200);
  }
}

/** VmRSS, RssAnon and RssFile of a process, in MiB. */
function procRss(pid) {
  const fields = {};
  for (const line of readFileSync(`/proc/${pid}/status`, 'utf8').split('\n')) {
    const [key, value] = line.split(/:\s+/);
    if (key === 'VmRSS' || key === 'RssAnon' || key === 'RssFile')
      fields[key] = Number.parseInt(value, 10) / 1024;
  }
  return fields;
}

const mib = (bytes) => bytes / 1024 / 1024;

/** CPU seconds (user + system) a process has used so far, from /proc/<pid>/stat. */
function cpuSeconds(pid) {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  // Fields after the command name, which is in parentheses and may hold spaces.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

/** One sample of both processes at the same moment: RSS from /proc first, then the probes' reports. */
async function sample() {
  const rss = { agent: procRss(agent.child.pid), bare: procRss(bare.child.pid) };
  const [a, b] = await Promise.all([agent.report('report'), bare.report('report')]);
  const of = (m) => ({ heapTotal: mib(m.heapTotal), heapUsed: mib(m.heapUsed), external: mib(m.external) });
  return { agent: { ...rss.agent, ...of(a) }, bare: { ...rss.bare, ...of(b) } };
}

/** Settles, takes ROUNDS samples, then the retained heap of each process (after a forced GC). */
async function phase(name) {
  await sleep(SETTLE_MS);
  const cpuBefore = cpuSeconds(agent.child.pid);
  const samples = [];
  for (let i = 0; i < ROUNDS; i++) {
    if (i > 0) await sleep(SAMPLE_EVERY_MS);
    samples.push(await sample());
  }
  const cpu = cpuSeconds(agent.child.pid) - cpuBefore;
  const [a, b] = await Promise.all([agent.report('gc'), bare.report('gc')]);
  const snapshots = process.env.BENCH_RSS_HEAPSNAPSHOTS;
  if (snapshots) await agent.report(`snapshot ${join(snapshots, `${name}.heapsnapshot`)}`);
  return { samples, cpu, retained: { agent: mib(a.heapUsed), bare: mib(b.heapUsed) } };
}

const stats = (values) => {
  const sorted = [...values].sort((x, y) => x - y);
  return { min: sorted[0], median: sorted[Math.floor(sorted.length / 2)], max: sorted.at(-1) };
};
const cell = (values, digits = 1) => {
  const { min, median, max } = stats(values);
  return `${median.toFixed(digits)} (${min.toFixed(digits)}–${max.toFixed(digits)})`;
};

function report(label, { samples, cpu, retained }) {
  const rows = [
    ['RSS (MiB)', (s) => s.VmRSS],
    ['  anonymous', (s) => s.RssAnon],
    ['  file-backed', (s) => s.RssFile],
    ['V8 heap total', (s) => s.heapTotal],
    ['V8 heap used', (s) => s.heapUsed],
    ['external + buffers', (s) => s.external],
  ];
  process.stdout.write(`\n${label} (${samples.length} samples; median (min–max))\n`);
  process.stdout.write(`${''.padEnd(22)}${'agent'.padEnd(22)}${'bare node'.padEnd(22)}agent − bare\n`);
  for (const [name, pick] of rows)
    process.stdout.write(
      `${name.padEnd(22)}${cell(samples.map((s) => pick(s.agent))).padEnd(22)}` +
        `${cell(samples.map((s) => pick(s.bare))).padEnd(22)}` +
        `${cell(samples.map((s) => pick(s.agent) - pick(s.bare)))}\n`,
    );
  process.stdout.write(
    `ratio agent/bare RSS  ${cell(
      samples.map((s) => s.agent.VmRSS / s.bare.VmRSS),
      2,
    )}\n`,
  );
  process.stdout.write(
    `heap retained (after a forced GC, once): agent ${retained.agent.toFixed(1)} MiB, ` +
      `bare ${retained.bare.toFixed(1)} MiB\n` +
      `agent CPU over the ${(((samples.length - 1) * SAMPLE_EVERY_MS) / 1000).toFixed(0)} s of samples: ${cpu.toFixed(2)} s\n`,
  );
}

try {
  await until('the agent to attest and serve', async () => {
    const s = await health();
    return s?.state === 'healthy' && s.workload?.socket_path ? s : undefined;
  });
  const idle = await phase('idle');

  const alias = await createTokenAlias();
  const fillCpuBefore = cpuSeconds(agent.child.pid);
  const fillGcBefore = (await agent.report('report')).collections;
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
  await until(`${ENTRIES} cached SVIDs`, async () => ((await health())?.workload?.svids ?? 0) >= ENTRIES);
  const fillCpu = cpuSeconds(agent.child.pid) - fillCpuBefore;
  const fillGcAfter = (await agent.report('report')).collections;
  const fillGc = (key) => fillGcAfter[key] - fillGcBefore[key];
  const loaded = await phase('loaded');

  report('idle: attested, 0 entries', idle);
  report(`${ENTRIES} cached workload X.509-SVIDs`, loaded);
  const median = (phase) => stats(phase.samples.map((s) => s.agent.VmRSS)).median;
  const kib = (loadedMiB, idleMiB) => (((loadedMiB - idleMiB) * 1024) / ENTRIES).toFixed(1);
  process.stdout.write(
    `\nper cached SVID (loaded − idle): RSS ${kib(median(loaded), median(idle))} KiB (medians), ` +
      `retained heap ${kib(loaded.retained.agent, idle.retained.agent)} KiB\n` +
      `agent CPU to fetch and cache the ${ENTRIES} SVIDs: ${fillCpu.toFixed(2)} s, of which garbage ` +
      `collection ${fillGc('minor')} minor (${fillGc('minorMs').toFixed(0)} ms) and ` +
      `${fillGc('major')} major (${fillGc('majorMs').toFixed(0)} ms)\n` +
      `agent node flags: ${agentFlags.join(' ') || '(none)'}\n`,
  );
  for (const [what, phase, goal] of [
    ['idle', idle, 70],
    [`with ${ENTRIES} SVIDs`, loaded, 110],
  ])
    reportFigure({
      figure: `agent RSS MiB, ${what}`,
      ...stats(phase.samples.map((s) => s.agent.VmRSS)),
      goal: `≤ ${goal} MiB`,
      met: median(phase) <= goal,
      digits: 1,
    });
} finally {
  agent.child.kill('SIGTERM');
  bare.child.kill('SIGTERM');
  await new Promise((resolve) => agent.child.once('exit', resolve));
  await server.stop();
  rmSync(dir, { recursive: true, force: true });
}
