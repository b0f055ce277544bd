#!/usr/bin/env node
// The agent's calls to the server over a new mTLS connection each (as before) against one kept
// connection: server and agent CPU per call, A/B interleaved, with the ratio, for each kind of call
// the agent makes on its SVID: a sync round (FetchEntries + FetchBundles), a JWT-SVID mint
// (NewJWTSVID) and an agent SVID renewal (RenewAgent, join token). The server runs in this process
// from dist/ (memory key manager, development mode), the client in a child process, so each side's
// CPU is its own. Run after a build (`npm run bench:agent-connection` does both).
import { fork } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { existsSync, rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { benchEntry, startBenchServer } from './lib/bench-server.mjs';

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
const CALLS_PER_SAMPLE = 40;

const { AgentApiClient } = await import(join(dist, 'agent', 'client.js'));
const { createCsr, createKeySigner, newKeyPair, SpiffeId } = await import(join(dist, 'spiffe', 'index.js'));
const open = ({ address, bundlePem }, identity) =>
  new AgentApiClient({ address, trustDomain: TD, bundlePem, ...(identity ? { identity } : {}) });

/** A fresh P-256 key and a CSR for it, as the agent makes for attestation and renewal. */
async function keyAndCsr() {
  const { privateKey } = newKeyPair('ec', { namedCurve: 'P-256' });
  const csr = Buffer.from(
    await createCsr({ spiffeId: SpiffeId.parse(`spiffe://${TD}/agent/csr`) }, createKeySigner(privateKey)),
  );
  return { privateKey, csr };
}

const noChallenge = async () => {
  throw new Error('no challenge expected');
};

if (process.argv[2] === '--client') {
  // The agent's side: runs the calls it is sent, answers with its own CPU time.
  let kept;
  let setup;
  // Renewal signs this CSR every time: the server's side is the same, and key generation is no part
  // of what a connection costs.
  const { csr } = await keyAndCsr();
  const calls = {
    sync: async (client) => {
      await client.fetchEntries(undefined);
      await client.fetchBundles();
    },
    jwt: (client) => client.newJwtSvid(setup.entryId, ['bench']),
    renew: (client) => client.renew({ csr, tpm: null }, noChallenge),
  };
  process.on('message', async (m) => {
    if (m.setup) {
      setup = m.setup;
      kept = open(setup, setup.identity);
      for (const call of Object.values(calls)) await call(kept);
      process.send({ ready: true });
      return;
    }
    if (m.stop) {
      kept.close();
      process.disconnect();
      return;
    }
    const call = calls[m.call];
    const before = process.cpuUsage();
    for (let i = 0; i < CALLS_PER_SAMPLE; i++) {
      if (m.mode === 'kept') await call(kept);
      else {
        const client = open(setup, setup.identity);
        try {
          await call(client);
        } finally {
          client.close();
        }
      }
    }
    process.send({ cpu: cpuMs(process.cpuUsage(before)) });
  });
} else await main();

function cpuMs(used) {
  return (used.user + used.system) / 1000 / CALLS_PER_SAMPLE;
}

async function main() {
  // Renewals in a loop, far past the default limit per source address.
  const { dir, server, bundlePem, token } = await startBenchServer(dist, TD, 'ironroot-bench-conn-', {
    attestation_rate_limit: { per_second: 10_000, burst: 10_000 },
  });
  const address = `127.0.0.1:${server.ports.agentApi}`;

  // A join-token agent SVID, the identity of every call below. Its renewals leave it current: the
  // renewed SVIDs are never used, so none of them supersedes it.
  const { privateKey, csr } = await keyAndCsr();
  const bootstrap = open({ address, bundlePem }, undefined);
  const result = await bootstrap.attest(
    { method: 'join_token', csr, tpm: null, join_token: token.value },
    noChallenge,
  );
  bootstrap.close();
  const identity = {
    keyPem: privateKey.export({ format: 'pem', type: 'pkcs8' }).toString(),
    chainPem: result.svid_chain.map((der) => new X509Certificate(der).toString()).join(''),
  };
  // One workload entry of this agent, for the JWT-SVIDs.
  const entry = await server.datastore.createEntry(
    benchEntry({
      spiffeId: `spiffe://${TD}/bench/workload`,
      parentId: result.spiffe_id,
      selectors: [{ type: 'unix', value: 'uid:1000' }],
    }),
    'bench',
  );

  const child = fork(fileURLToPath(import.meta.url), ['--client']);
  const reply = () => new Promise((resolve) => child.once('message', resolve));
  child.send({ setup: { address, bundlePem, identity, entryId: entry.id } });
  await reply();
  /** Server and client CPU milliseconds per call over `CALLS_PER_SAMPLE` calls of `call` in `mode`. */
  async function sample(call, mode) {
    const before = process.cpuUsage();
    child.send({ call, mode });
    const { cpu } = await reply();
    return { server: cpuMs(process.cpuUsage(before)), client: cpu };
  }

  const sorted = (xs) => [...xs].sort((x, y) => x - y);
  const median = (xs) => sorted(xs)[Math.floor(xs.length / 2)];
  const fmt = (xs) => {
    const s = sorted(xs);
    return `min ${s[0].toFixed(2)}  median ${median(xs).toFixed(2)}  max ${s[s.length - 1].toFixed(2)} ms`;
  };
  const side = (name, a, b, pick) =>
    `  ${name}\n` +
    `    new connection per call (before): ${fmt(a.map(pick))}\n` +
    `    one kept connection (now):        ${fmt(b.map(pick))}\n` +
    `    ratio kept / new (median):        ${(median(b.map(pick)) / median(a.map(pick))).toFixed(3)}\n`;

  const titles = {
    sync: 'sync round (FetchEntries + FetchBundles)',
    jwt: 'JWT-SVID mint (NewJWTSVID)',
    renew: 'agent SVID renewal (RenewAgent, join token)',
  };
  let out = `agent calls to the server, CPU per call (${SAMPLES} samples × ${CALLS_PER_SAMPLE} calls, new and kept interleaved)\n`;
  for (const call of Object.keys(titles)) {
    // Warm-up: JIT, the server's certificate cache.
    await sample(call, 'new');
    await sample(call, 'kept');
    const a = [];
    const b = [];
    for (let s = 0; s < SAMPLES; s++) {
      a.push(await sample(call, 'new'));
      b.push(await sample(call, 'kept'));
    }
    out +=
      `${titles[call]}\n` +
      side('server', a, b, (x) => x.server) +
      side('agent (client)', a, b, (x) => x.client);
  }
  child.send({ stop: true });
  await server.stop();
  rmSync(dir, { recursive: true, force: true });
  process.stdout.write(out);
}
