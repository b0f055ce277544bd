#!/usr/bin/env node
// X.509-SVID issuance end to end, in issue 13's form: BatchNewX509SVID over the real mTLS agent API,
// 8 callers at once, the CA key on SoftHSM2 through the real PKCS#11 key manager, ÷ a raw SHA-256 +
// C_SignInit + C_Sign loop on the same key in the same server process, A/B interleaved, several
// rounds, min/median/max.
//
// Processes: this one only directs and measures. The real server (from dist/, SQLite, SoftHSM2
// token) runs in one child, which also runs the raw loop (same library, same login, the CA key found
// by its label, its own session) while the callers are idle; the callers run in another child.
// Each caller is an agent attested with a join token, as on first start, holding its own agent SVID
// and one AgentApiClient (one mTLS connection, kept, as the agent's sync loop keeps it). Each has
// `--batch` workload entries parented to it and sends one CSR per entry per call: the agent sends
// at most 100 CSRs per call (CSR_BATCH in src/agent/sync.ts), full batches whenever many SVIDs fall
// due at once (first sync, CA rotation), which is when issuance throughput matters.
// Keys and CSRs are made before each timed sample, fresh for every call: building them is the
// agent's work, not the server's.
//
// Figures: SVIDs issued per second end to end (first call sent to last answer received, every
// answer checked to carry one chain per CSR, in order) ÷ raw signatures per second; the server's
// CPU per SVID (getrusage of its process: every thread, SoftHSM's and libuv's pool included), and
// the callers' (gRPC, TLS, decoding the answers), which share the machine's cores with the server.
//
// Usage: npm run bench:batch-issuance -- [--rounds 5] [--callers 8] [--batch 100] [--calls 3]
//   [--raw-seconds 2] [--profile DIR]
// `--profile DIR` runs the server under `node --cpu-prof` and writes its profile into DIR.
import { createHash, generateKeyPair } from 'node:crypto';
import { existsSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { loadavg } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs, promisify } from 'node:util';
import { reportFigure } from './lib/bench-figure.mjs';
import { child, serve } from './lib/bench-rpc.mjs';

const self = fileURLToPath(import.meta.url);
const dist = join(dirname(self), '..', 'dist');
if (!existsSync(join(dist, 'server', 'server.js'))) {
  process.stderr.write(
    'bench-batch-issuance: dist/ is missing; run `npx tsc -p tsconfig.build.json` first\n',
  );
  process.exit(1);
}
const TD = 'bench.example.org';

const { values: flags } = parseArgs({
  options: {
    role: { type: 'string', default: 'main' },
    rounds: { type: 'string', default: '5' },
    callers: { type: 'string', default: '8' },
    batch: { type: 'string', default: '100' },
    calls: { type: 'string', default: '3' },
    'raw-seconds': { type: 'string', default: '2' },
    profile: { type: 'string' },
  },
});

const cpuMs = () => {
  const { user, system } = process.cpuUsage();
  return (user + system) / 1000;
};

// ---------------------------------------------------------------------------------------------
// The real server, and the raw signature loop on its CA key.
async function realServer() {
  const { benchToken, SOFTHSM_MODULE } = await import('./lib/softhsm-token.mjs');
  const { benchJoinTokens, createBenchWorkloads, startBenchServer } = await import('./lib/bench-server.mjs');
  const token = benchToken('ironroot-bench-batch-hsm-');
  const { dir, server, bundlePem, registration } = await startBenchServer(dist, TD, 'ironroot-bench-batch-', {
    key_manager: `pkcs11:token=bench;module-path=${SOFTHSM_MODULE};pin-source=file:${token.pinFile}`,
    development: false,
    attestation_rate_limit: { per_second: 10_000, burst: 10_000 },
  });

  // The bare signature: a second pkcs11js handle on the library the key manager loaded (same login),
  // its own session, the active CA key found by its label; SHA-256 of a TBS-sized input, then
  // C_SignInit and the asynchronous C_Sign, as the key manager does.
  const pkcs11js = createRequire(import.meta.url)('pkcs11js');
  const raw = new pkcs11js.PKCS11();
  raw.load(SOFTHSM_MODULE);
  try {
    raw.C_Initialize({ flags: pkcs11js.CKF_OS_LOCKING_OK });
  } catch (error) {
    if (error.code !== pkcs11js.CKR_CRYPTOKI_ALREADY_INITIALIZED) throw error;
  }
  const [slot] = raw.C_GetSlotList(true);
  const session = raw.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION | pkcs11js.CKF_RW_SESSION);
  const caKeyId = server.ca.slots.find((s) => s.authority === 'x509' && s.state === 'active').keyId;
  raw.C_FindObjectsInit(session, [
    { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PRIVATE_KEY },
    { type: pkcs11js.CKA_LABEL, value: caKeyId },
  ]);
  const [rawKey] = raw.C_FindObjects(session, 1);
  raw.C_FindObjectsFinal(session);
  if (rawKey === undefined) throw new Error(`CA key ${caKeyId} not found on the token`);
  const tbs = Buffer.alloc(400, 0x5a);
  const bareSign = () => {
    const digest = createHash('sha256').update(tbs).digest();
    raw.C_SignInit(session, { mechanism: pkcs11js.CKM_ECDSA }, rawKey);
    return new Promise((resolve, reject) =>
      raw.C_Sign(session, digest, Buffer.alloc(64), (error, signature) =>
        error ? reject(error) : resolve(signature),
      ),
    );
  };

  serve({
    info: () => ({ address: `127.0.0.1:${server.ports.agentApi}`, bundlePem }),
    tokens: ({ count }) => benchJoinTokens(registration, count),
    // Workload entries parented to each agent.
    entries: ({ agentIds, perAgent }) => createBenchWorkloads(server.datastore, TD, agentIds, perAgent),
    cpu: () => cpuMs(),
    // The raw loop, one signature at a time, for `seconds`.
    raw: async ({ seconds }) => {
      const cpu0 = cpuMs();
      const started = performance.now();
      const deadline = started + seconds * 1000;
      let count = 0;
      while (performance.now() < deadline) {
        await bareSign();
        count++;
      }
      return { count, wallMs: performance.now() - started, cpuMs: cpuMs() - cpu0 };
    },
    stop: async () => {
      raw.C_CloseSession(session);
      await server.stop();
      rmSync(dir, { recursive: true, force: true });
      rmSync(token.dir, { recursive: true, force: true });
      // Exits from here so that --cpu-prof writes its profile.
      setImmediate(() => process.exit(0));
    },
  });
}

// ---------------------------------------------------------------------------------------------
// The callers: one attested agent each.
async function callers() {
  const { AgentApiClient } = await import(join(dist, 'agent', 'client.js'));
  const { createCsr, createKeySigner, SpiffeId } = await import(join(dist, 'spiffe', 'index.js'));
  const { attestJoinTokenAgent } = await import('./lib/bench-server.mjs');
  const newKey = promisify(generateKeyPair);
  const agents = [];

  serve({
    attest: async ({ target, tokens }) => {
      const bootstrap = new AgentApiClient({
        address: target.address,
        trustDomain: TD,
        bundlePem: target.bundlePem,
      });
      for (const value of tokens) {
        const { id, identity } = await attestJoinTokenAgent(dist, bootstrap, TD, value);
        agents.push({
          id,
          client: new AgentApiClient({
            address: target.address,
            trustDomain: TD,
            bundlePem: target.bundlePem,
            identity,
          }),
        });
      }
      bootstrap.close();
      return agents.map((a) => a.id);
    },
    // Each agent's entries, as its first sync receives them.
    entries: async () => {
      for (const agent of agents) {
        const sync = await agent.client.fetchEntries(undefined);
        agent.entries = sync.entries.map((e) => ({ id: e.id, spiffeId: SpiffeId.parse(e.spiffe_id) }));
      }
      return agents.map((a) => a.entries.length);
    },
    // Fresh keys and CSRs for the next sample: `calls` calls per agent, one CSR per entry each.
    prepare: async ({ calls }) => {
      for (const agent of agents) {
        agent.calls = [];
        for (let c = 0; c < calls; c++) {
          const requests = [];
          for (const entry of agent.entries) {
            const { privateKey } = await newKey('ec', { namedCurve: 'P-256' });
            requests.push({
              entry_id: entry.id,
              csr: Buffer.from(await createCsr({ spiffeId: entry.spiffeId }, createKeySigner(privateKey))),
            });
          }
          agent.calls.push(requests);
        }
      }
    },
    // Every agent sends its prepared calls one after another, all agents at once.
    run: async () => {
      const cpu0 = cpuMs();
      const started = performance.now();
      const issued = await Promise.all(
        agents.map(async (agent) => {
          let n = 0;
          for (const requests of agent.calls) {
            const { svids } = await agent.client.batchNewX509Svid(requests);
            if (svids.length !== requests.length || svids.some((s, i) => s.entry_id !== requests[i].entry_id))
              throw new Error(
                `${agent.id}: ${svids.length} SVIDs back for ${requests.length} CSRs, or out of order`,
              );
            if (svids.some((s) => s.chain.length === 0)) throw new Error(`${agent.id}: an empty chain`);
            n += svids.length;
          }
          return n;
        }),
      );
      const wallMs = performance.now() - started;
      return { svids: issued.reduce((a, b) => a + b, 0), wallMs, cpuMs: cpuMs() - cpu0 };
    },
    stop: async () => {
      for (const agent of agents) agent.client.close();
      setImmediate(() => process.exit(0));
    },
  });
}

// ---------------------------------------------------------------------------------------------
const sorted = (xs) => [...xs].sort((a, b) => a - b);
const stats = (xs) => {
  const s = sorted(xs);
  return { min: s[0], median: s[Math.floor(s.length / 2)], max: s.at(-1) };
};
const fmt = ({ min, median, max }, digits = 3) =>
  `min ${min.toFixed(digits)}  median ${median.toFixed(digits)}  max ${max.toFixed(digits)}`;

async function main() {
  const rounds = Number(flags.rounds);
  const count = Number(flags.callers);
  const batch = Number(flags.batch);
  const calls = Number(flags.calls);
  const rawSeconds = Number(flags['raw-seconds']);
  const server = child(self, 'server', flags.profile ? ['--cpu-prof', '--cpu-prof-dir', flags.profile] : []);
  const client = child(self, 'callers');
  try {
    const target = await server.call('info');
    const ids = await client.call('attest', { target, tokens: await server.call('tokens', { count }) });
    await server.call('entries', { agentIds: ids, perAgent: batch });
    const perAgent = await client.call('entries');
    if (perAgent.some((n) => n !== batch))
      throw new Error(`agents received ${perAgent} entries, not ${batch}`);

    /** One end-to-end sample: the server's CPU and the callers' wall time over the same calls. */
    const endToEnd = async () => {
      await client.call('prepare', { calls });
      const cpu0 = await server.call('cpu');
      const { svids, wallMs, cpuMs: callerCpu } = await client.call('run');
      const cpu = (await server.call('cpu')) - cpu0;
      return { rate: svids / (wallMs / 1000), cpuPerSvid: cpu / svids, callerCpuPerSvid: callerCpu / svids };
    };
    const rawSample = async () => {
      const { count: n, wallMs, cpuMs: cpu } = await server.call('raw', { seconds: rawSeconds });
      return { rate: n / (wallMs / 1000), cpuPerSign: cpu / n };
    };
    // Warm-up: JIT, SoftHSM's caches, the connections.
    await endToEnd();
    await rawSample();

    process.stdout.write(
      `X.509-SVID issuance end to end: BatchNewX509SVID over mTLS, ${count} callers (agents), ${batch} CSRs per call, ` +
        `${calls} calls each per sample, CA key EC P-256 on SoftHSM2; ${rounds} rounds A/B with a raw C_Sign loop ` +
        `(${rawSeconds} s per sample); load average ${loadavg()
          .map((n) => n.toFixed(1))
          .join(' ')}\n`,
    );
    const e2e = [];
    const bare = [];
    for (let r = 0; r < rounds; r++) {
      if (r % 2 === 0) {
        bare.push(await rawSample());
        e2e.push(await endToEnd());
      } else {
        e2e.push(await endToEnd());
        bare.push(await rawSample());
      }
    }
    const ratios = e2e.map((s, i) => s.rate / bare[i].rate);
    const cpuRatios = e2e.map((s, i) => s.cpuPerSvid / bare[i].cpuPerSign);
    process.stdout.write(
      `  end to end, SVIDs/s:                   ${fmt(stats(e2e.map((s) => s.rate)), 0)}\n` +
        `  raw C_Sign loop, signatures/s:         ${fmt(stats(bare.map((s) => s.rate)), 0)}\n` +
        `  server CPU per SVID, ms:               ${fmt(stats(e2e.map((s) => s.cpuPerSvid)))}\n` +
        `  callers' CPU per SVID, ms:             ${fmt(stats(e2e.map((s) => s.callerCpuPerSvid)))}\n` +
        `  raw loop CPU per signature, ms:        ${fmt(stats(bare.map((s) => s.cpuPerSign)))}\n` +
        `  server CPU per SVID ÷ per raw sign:    ${fmt(stats(cpuRatios), 2)}\n` +
        `  SVIDs/s ÷ raw signatures/s (same round): ${fmt(stats(ratios))}\n`,
    );
    const figure = stats(ratios);
    reportFigure({
      figure: `X.509-SVID issuance end to end (BatchNewX509SVID, ${count} callers × ${batch} CSRs, SoftHSM2) ÷ raw C_Sign`,
      ...figure,
      goal: '≥ 0.5',
      met: figure.median >= 0.5,
      digits: 3,
    });
  } finally {
    await Promise.allSettled([client.call('stop'), server.call('stop')]);
  }
}

if (flags.role === 'server') await realServer();
else if (flags.role === 'callers') await callers();
else await main();
