#!/usr/bin/env node
// Agent memory: the RSS of a real `ironroot-agent run` process, idle (attested, no entries) and
// holding 1000 cached workload X.509-SVIDs, with the ratio. Run after a build (`npm run
// bench:agent` does both): the server runs in this process from dist/ (memory: key manager,
// development mode), the agent as its own process, so its RSS is its own.
import { spawn } from 'node:child_process';
import { existsSync, readFileSync, rmSync } from 'node:fs';
import { request } from 'node:http';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { reportFigure } from './lib/bench-figure.mjs';
import { startBenchServer } from './lib/bench-server.mjs';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const dist = join(root, 'dist');
if (!existsSync(join(dist, 'server', 'server.js'))) {
  process.stderr.write('bench-agent: dist/ is missing; run `npx tsc -p tsconfig.build.json` first\n');
  process.exit(1);
}
const ENTRIES = 1000;
const TD = 'bench.example.org';

const { hashJoinToken } = await import(join(dist, 'server', 'registration', 'service.js'));

const { dir, server, bundleFile, token } = await startBenchServer(dist, TD, 'ironroot-bench-agent-');

const dataDir = join(dir, 'agent');
const agent = spawn(
  process.execPath,
  [
    join(root, 'bin', 'ironroot-agent.js'),
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
    '--log-level',
    process.env.BENCH_AGENT_LOG_LEVEL ?? 'warn',
  ],
  { stdio: ['ignore', 'inherit', 'inherit'] },
);

function health() {
  return new Promise((resolve) => {
    const req = request({ socketPath: join(dataDir, 'agent-health.sock'), path: '/live' }, (res) => {
      let body = '';
      res.on('data', (d) => {
        body += d;
      });
      res.on('end', () => resolve(JSON.parse(body)));
    });
    req.on('error', () => resolve(undefined));
    req.end();
  });
}

async function until(what, check, timeoutMs = 300_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`bench-agent: timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
}

function rssMiB(pid) {
  const line = readFileSync(`/proc/${pid}/status`, 'utf8')
    .split('\n')
    .find((l) => l.startsWith('VmRSS:'));
  return Number(line?.split(/\s+/)[1] ?? 0) / 1024;
}

/** RSS after the agent has been left alone for a while (a few syncs, GC settled): median of 5. */
async function settledRss(pid) {
  await new Promise((resolve) => setTimeout(resolve, 5000));
  const samples = [];
  for (let i = 0; i < 5; i++) {
    samples.push(rssMiB(pid));
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
  return samples.sort((a, b) => a - b)[2];
}

try {
  await until('the agent to attest and serve', async () => {
    const s = await health();
    return s?.state === 'healthy' && s.workload?.socket_path ? s : undefined;
  });
  const idle = await settledRss(agent.pid);

  const alias = await server.datastore.createEntry(
    {
      spiffeId: `spiffe://${TD}/node/bench`,
      parentId: `spiffe://${TD}/ironroot/server`,
      selectors: [{ type: 'join_token', value: hashJoinToken(token.value).slice(0, 12) }],
      x509SvidTtl: 0,
      jwtSvidTtl: 0,
      dnsNames: [],
      admin: false,
      downstream: false,
      federatesWith: [],
      hint: '',
      expiresAt: 0,
    },
    'bench',
  );
  const started = performance.now();
  for (let i = 0; i < ENTRIES; i++)
    await server.datastore.createEntry(
      {
        spiffeId: `spiffe://${TD}/workload/${i}`,
        parentId: alias.spiffeId,
        selectors: [{ type: 'unix', value: `uid:${200_000 + i}` }],
        x509SvidTtl: 3600,
        jwtSvidTtl: 0,
        dnsNames: [],
        admin: false,
        downstream: false,
        federatesWith: [],
        hint: '',
        expiresAt: 0,
      },
      'bench',
    );
  await until(`${ENTRIES} cached SVIDs`, async () => ((await health())?.workload?.svids ?? 0) >= ENTRIES);
  const fillSeconds = (performance.now() - started) / 1000;
  const loaded = await settledRss(agent.pid);

  const table = [
    ['agent state', 'RSS (MiB)'],
    ['idle (attested, 0 entries)', idle.toFixed(1)],
    [`${ENTRIES} cached X.509-SVIDs`, loaded.toFixed(1)],
    ['ratio', `${(loaded / idle).toFixed(2)}x`],
  ];
  for (const [a, b] of table) process.stdout.write(`${a.padEnd(32)} ${b}\n`);
  // Each is the median of five readings (settledRss); one run, so min, median and max are the same.
  for (const [what, mib, goal] of [
    ['idle', idle, 70],
    [`with ${ENTRIES} SVIDs`, loaded, 110],
  ])
    reportFigure({
      figure: `agent RSS MiB, ${what}`,
      min: mib,
      median: mib,
      max: mib,
      goal: `≤ ${goal} MiB`,
      met: mib <= goal,
      digits: 1,
    });
  process.stdout.write(
    `(${ENTRIES} entries created and their SVIDs issued and cached in ${fillSeconds.toFixed(1)} s; ` +
      `${(((loaded - idle) * 1024) / ENTRIES).toFixed(1)} KiB per cached SVID)\n`,
  );
} finally {
  agent.kill('SIGTERM');
  await new Promise((resolve) => agent.once('exit', resolve));
  await server.stop();
  rmSync(dir, { recursive: true, force: true });
}
