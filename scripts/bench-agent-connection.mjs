#!/usr/bin/env node
// Agent sync rounds over a new mTLS connection each (as before) against one kept connection: CPU
// per round (FetchEntries + FetchBundles), A/B interleaved, with the ratio. The server runs in this
// process from dist/ (memory key manager, development mode), the client in a child process, so
// each side's CPU is its own. Run after a build (`npm run bench:agent-connection` does both).
import { fork } from 'node:child_process';
import { generateKeyPairSync, X509Certificate } from 'node:crypto';
import { existsSync, rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { startBenchServer } from './lib/bench-server.mjs';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const dist = join(root, 'dist');
if (!existsSync(join(dist, 'server', 'server.js'))) {
  process.stderr.write(
    'bench-agent-connection: dist/ is missing; run `npx tsc -p tsconfig.build.json` first\n',
  );
  process.exit(1);
}
const TD = 'bench.example.org';
const SAMPLES = 7;
const ROUNDS_PER_SAMPLE = 40;

const { AgentApiClient } = await import(join(dist, 'agent', 'client.js'));
const open = ({ address, bundlePem }, identity) =>
  new AgentApiClient({ address, trustDomain: TD, bundlePem, ...(identity ? { identity } : {}) });

if (process.argv[2] === '--client') {
  // The agent's side: runs the rounds it is sent, answers with its own CPU time.
  let kept;
  process.on('message', async (m) => {
    if (m.setup) {
      kept = open(m.setup, m.setup.identity);
      await round(kept);
      process.send({ ready: true });
      return;
    }
    if (m.stop) {
      kept.close();
      process.disconnect();
      return;
    }
    const before = process.cpuUsage();
    for (let i = 0; i < ROUNDS_PER_SAMPLE; i++) {
      if (m.mode === 'kept') await round(kept);
      else {
        const client = open(m.target, m.target.identity);
        try {
          await round(client);
        } finally {
          client.close();
        }
      }
    }
    process.send({ cpu: cpuMs(process.cpuUsage(before)) });
  });
} else await main();

async function round(client) {
  await client.fetchEntries(undefined);
  await client.fetchBundles();
}

function cpuMs(used) {
  return (used.user + used.system) / 1000 / ROUNDS_PER_SAMPLE;
}

async function main() {
  const { createCsr, createKeySigner, SpiffeId } = await import(join(dist, 'spiffe', 'index.js'));

  const { dir, server, bundlePem, token } = await startBenchServer(dist, TD, 'ironroot-bench-conn-');
  const address = `127.0.0.1:${server.ports.agentApi}`;
  const target = { address, bundlePem };

  // A join-token agent SVID, the identity of every round below.
  const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const csr = Buffer.from(
    await createCsr({ spiffeId: SpiffeId.parse(`spiffe://${TD}/agent/csr`) }, createKeySigner(privateKey)),
  );
  const bootstrap = open(target, undefined);
  const result = await bootstrap.attest(
    { method: 'join_token', csr, tpm: null, join_token: token.value },
    async () => {
      throw new Error('no challenge expected');
    },
  );
  bootstrap.close();
  const identity = {
    keyPem: privateKey.export({ format: 'pem', type: 'pkcs8' }).toString(),
    chainPem: result.svid_chain.map((der) => new X509Certificate(der).toString()).join(''),
  };

  const child = fork(fileURLToPath(import.meta.url), ['--client']);
  const reply = () => new Promise((resolve) => child.once('message', resolve));
  child.send({ setup: { ...target, identity } });
  await reply();
  /** Server and client CPU milliseconds per round over `ROUNDS_PER_SAMPLE` rounds of `mode`. */
  async function sample(mode) {
    const before = process.cpuUsage();
    child.send({ mode, target: { ...target, identity } });
    const { cpu } = await reply();
    return { server: cpuMs(process.cpuUsage(before)), client: cpu };
  }

  // Warm-up: JIT, the server's certificate cache.
  await sample('new');
  await sample('kept');
  const a = [];
  const b = [];
  for (let s = 0; s < SAMPLES; s++) {
    a.push(await sample('new'));
    b.push(await sample('kept'));
  }
  child.send({ stop: true });
  await server.stop();
  rmSync(dir, { recursive: true, force: true });

  const sorted = (xs) => [...xs].sort((x, y) => x - y);
  const median = (xs) => sorted(xs)[Math.floor(xs.length / 2)];
  const fmt = (xs) => {
    const s = sorted(xs);
    return `min ${s[0].toFixed(2)}  median ${median(xs).toFixed(2)}  max ${s[s.length - 1].toFixed(2)} ms`;
  };
  const side = (name, pick) =>
    `${name}\n` +
    `  new connection per round (before): ${fmt(a.map(pick))}\n` +
    `  one kept connection (now):         ${fmt(b.map(pick))}\n` +
    `  ratio kept / new (median):         ${(median(b.map(pick)) / median(a.map(pick))).toFixed(3)}\n`;
  process.stdout.write(
    `agent sync round CPU per round (FetchEntries + FetchBundles; ${SAMPLES} samples × ${ROUNDS_PER_SAMPLE} rounds, interleaved)\n` +
      side('server', (x) => x.server) +
      side('agent (client)', (x) => x.client),
  );
}
