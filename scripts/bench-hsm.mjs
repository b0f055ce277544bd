#!/usr/bin/env node
// Signing throughput on SoftHSM2: our PKCS#11 KeyManager against a bare pkcs11js C_Sign loop on the same
// key with the same number of sessions, plus node:crypto in memory for scale, and the worst event-loop
// delay while signing at full rate. Run after a build (`npm run bench:hsm`); it imports from dist/.
// Prints figures only; it asserts nothing.
import { createHash, sign } from 'node:crypto';
import { rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { loadavg } from 'node:os';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { benchToken, SOFTHSM_MODULE } from './lib/softhsm-token.mjs';

const MODULE = SOFTHSM_MODULE;
const SESSIONS = 4;
const SECONDS = Number(process.env.BENCH_SECONDS ?? 3);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 4);

const { dir, pinFile } = benchToken('ironroot-bench-');

const { Pkcs11KeyManager, parsePkcs11Uri } = await import('../dist/hsm/index.js');
const { newKeyPair } = await import('../dist/spiffe/index.js');
const pkcs11js = createRequire(import.meta.url)('pkcs11js');

// Recoveries would distort the figures (and would be news), so they are counted and printed.
const events = [];
const keys = await Pkcs11KeyManager.open(
  parsePkcs11Uri(
    `pkcs11:token=bench;module-path=${MODULE};pin-source=file:${pinFile};max-sessions=${SESSIONS}`,
  ),
  { onEvent: (event) => events.push(event) },
);
await keys.generateKey('bench', 'ec-p256');
const scheme = { kind: 'ecdsa', hash: 'sha256' };
const data = Buffer.from('ironroot benchmark payload: a TBSCertificate stands in here'.repeat(8));

/** Runs `workers` loops of `once` for SECONDS; returns signatures per second and the worst loop delay. */
async function measure(workers, once) {
  const delay = monitorEventLoopDelay({ resolution: 1 });
  let count = 0;
  const deadline = performance.now() + SECONDS * 1000;
  const started = performance.now();
  delay.enable();
  await Promise.all(
    Array.from({ length: workers }, async (_, worker) => {
      while (performance.now() < deadline) {
        await once(worker);
        count++;
      }
    }),
  );
  delay.disable();
  const elapsed = (performance.now() - started) / 1000;
  return { rate: count / elapsed, maxDelayMs: delay.max / 1e6, p99DelayMs: delay.percentile(99) / 1e6 };
}

// The bare loop: a second pkcs11js handle on the same library (so the same login), its own sessions,
// SHA-256 of the same data, C_SignInit and async C_Sign, as ours does, without the pool, key lookup or
// recovery bookkeeping. Each call hashes afresh: handing one shared digest Buffer to all concurrent
// calls measured markedly slower here, which would flatter our side.
const raw = new pkcs11js.PKCS11();
raw.load(MODULE);
try {
  raw.C_Initialize({ flags: pkcs11js.CKF_OS_LOCKING_OK });
} catch (error) {
  if (error.code !== pkcs11js.CKR_CRYPTOKI_ALREADY_INITIALIZED) throw error;
}
const [slot] = raw.C_GetSlotList(true);
const rawSessions = Array.from({ length: SESSIONS }, () =>
  raw.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION | pkcs11js.CKF_RW_SESSION),
);
raw.C_FindObjectsInit(rawSessions[0], [
  { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PRIVATE_KEY },
  { type: pkcs11js.CKA_LABEL, value: 'bench' },
]);
const rawKey = raw.C_FindObjects(rawSessions[0]);
raw.C_FindObjectsFinal(rawSessions[0]);
const mechanism = { mechanism: pkcs11js.CKM_ECDSA };

const ours = () => keys.sign('bench', scheme, data);
const bare = (worker) => {
  const session = rawSessions[worker];
  const digest = createHash('sha256').update(data).digest();
  const output = Buffer.alloc(64);
  raw.C_SignInit(session, mechanism, rawKey);
  return new Promise((resolve, reject) =>
    raw.C_Sign(session, digest, output, (error, signature) => (error ? reject(error) : resolve(signature))),
  );
};

const { privateKey } = newKeyPair('ec', { namedCurve: 'P-256' });
const inMemory = async () => sign('sha256', data, { key: privateKey, dsaEncoding: 'ieee-p1363' });

await measure(SESSIONS, ours); // warm-up: JIT, SoftHSM caches
const results = { ours: [], raw: [], node: [] };
// Alternating which goes first, so a drift in machine load does not favour one side.
for (let round = 0; round < ROUNDS; round++) {
  if (round % 2 === 0) {
    results.ours.push(await measure(SESSIONS, ours));
    results.raw.push(await measure(SESSIONS, bare));
  } else {
    results.raw.push(await measure(SESSIONS, bare));
    results.ours.push(await measure(SESSIONS, ours));
  }
}
results.node.push(await measure(1, inMemory));

const median = (values) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)];
const oursRate = median(results.ours.map((r) => r.rate));
const rawRate = median(results.raw.map((r) => r.rate));
const fmt = (n) => Math.round(n).toLocaleString('en-US');

console.log(
  `SoftHSM2 ECDSA P-256, ${SESSIONS} sessions, ${SECONDS}s per run, median of ${ROUNDS} runs; load average ${loadavg()
    .map((n) => n.toFixed(1))
    .join(' ')}`,
);
console.log(
  `  ours (KeyManager.sign, incl. SHA-256 of ${data.length} B): ${fmt(oursRate)} sig/s   runs: ${results.ours.map((r) => fmt(r.rate)).join(', ')}`,
);
console.log(
  `  raw pkcs11js SHA-256 + C_SignInit + async C_Sign:     ${fmt(rawRate)} sig/s   runs: ${results.raw.map((r) => fmt(r.rate)).join(', ')}`,
);
console.log(`  node:crypto in memory (sync sign, one thread):        ${fmt(results.node[0].rate)} sig/s`);
console.log(`  ratio ours / raw: ${(oursRate / rawRate).toFixed(3)} (target >= 0.9)`);
console.log(
  `  event-loop delay while signing through ours: worst ${Math.max(...results.ours.map((r) => r.maxDelayMs)).toFixed(2)} ms, p99 ${median(results.ours.map((r) => r.p99DelayMs)).toFixed(2)} ms`,
);
console.log(
  `  event-loop delay while signing raw:          worst ${Math.max(...results.raw.map((r) => r.maxDelayMs)).toFixed(2)} ms, p99 ${median(results.raw.map((r) => r.p99DelayMs)).toFixed(2)} ms`,
);

console.log(`  recovery events during the run: ${events.length === 0 ? 'none' : JSON.stringify(events)}`);

for (const session of rawSessions) raw.C_CloseSession(session);
await keys.close();
rmSync(dir, { recursive: true, force: true });
