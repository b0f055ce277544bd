#!/usr/bin/env node
// X.509-SVID issuance through the server's CA code path (CertificateAuthority.mintX509Svid, the call
// the agent API's BatchNewX509SVID makes per CSR), with the CA key on SoftHSM2, against a bare
// pkcs11js SHA-256 + C_SignInit + C_Sign on the same key: how much an SVID costs beyond the one
// signature it needs. A second row adds parseCsr, as the agent API does before minting.
// One call at a time (sync issues its batch sequentially). Run after a build
// (`npm run bench:issuance`); it imports from dist/. Prints figures only; it asserts nothing.
//
// Environment: BENCH_SECONDS (per sample, default 1), BENCH_ROUNDS (default 7).
import { execFileSync } from 'node:child_process';
import { createHash, generateKeyPairSync } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';

const MODULE = '/usr/lib/softhsm/libsofthsm2.so';
const SECONDS = Number(process.env.BENCH_SECONDS ?? 1);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 7);

const dir = mkdtempSync(join(tmpdir(), 'ironroot-bench-issuance-'));
const tokens = join(dir, 'tokens');
execFileSync('mkdir', [tokens]);
const conf = join(dir, 'softhsm2.conf');
writeFileSync(conf, `directories.tokendir = ${tokens}\nobjectstore.backend = file\nlog.level = ERROR\n`);
// SoftHSM reads its config at C_Initialize, so this must be set before the manager opens.
process.env.SOFTHSM2_CONF = conf;
const pin = 'bench-pin-1234';
execFileSync(
  'softhsm2-util',
  ['--init-token', '--free', '--label', 'bench', '--pin', pin, '--so-pin', 'bench-so-1234'],
  { stdio: 'ignore' },
);
const pinFile = join(dir, 'pin');
writeFileSync(pinFile, pin, { mode: 0o600 });

const { Pkcs11KeyManager, parsePkcs11Uri } = await import('../dist/hsm/index.js');
const { CertificateAuthority } = await import('../dist/server/ca/authority.js');
const { openSqliteDatastore } = await import('../dist/server/datastore/index.js');
const { createCsr, createKeySigner, parseCsr, SpiffeId } = await import('../dist/spiffe/index.js');
const { pino } = await import('pino');
const pkcs11js = createRequire(import.meta.url)('pkcs11js');

const keys = await Pkcs11KeyManager.open(
  parsePkcs11Uri(`pkcs11:token=bench;module-path=${MODULE};pin-source=file:${pinFile};max-sessions=1`),
);
const clock = { now: () => Date.now() };
const { datastore } = await openSqliteDatastore(join(dir, 'data'), clock);
const ca = await CertificateAuthority.open({
  trustDomain: 'bench.example',
  keyManager: keys,
  datastore,
  clock,
  logger: pino({ level: 'silent' }),
  caTtl: 24 * 3600,
  keyType: 'ec-p256',
  refreshHint: 300,
});
const caKeyId = ca.slots.find((s) => s.authority === 'x509' && s.state === 'active').keyId;

// The workload's key and CSR, made once: the figure is the server's cost, not the workload's.
const workload = generateKeyPairSync('ec', { namedCurve: 'P-256' });
const spiffeId = SpiffeId.parse('spiffe://bench.example/ns/default/sa/bench');
const csr = await createCsr({ spiffeId }, createKeySigner(workload.privateKey));
const mint = () => ca.mintX509Svid({ spiffeId, publicKey: workload.publicKey, ttl: 3600 });
const parseAndMint = async () => {
  const parsed = await parseCsr(csr);
  return ca.mintX509Svid({ spiffeId: parsed.spiffeId, publicKey: parsed.publicKey, ttl: 3600 });
};

// The bare signature: a second pkcs11js handle on the same library and login, its own session, the CA
// key found by its label, SHA-256 of a TBS-sized input and async C_Sign, as the key manager does.
const raw = new pkcs11js.PKCS11();
raw.load(MODULE);
try {
  raw.C_Initialize({ flags: pkcs11js.CKF_OS_LOCKING_OK });
} catch (error) {
  if (error.code !== pkcs11js.CKR_CRYPTOKI_ALREADY_INITIALIZED) throw error;
}
const [slot] = raw.C_GetSlotList(true);
const session = raw.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION | pkcs11js.CKF_RW_SESSION);
raw.C_FindObjectsInit(session, [
  { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PRIVATE_KEY },
  { type: pkcs11js.CKA_LABEL, value: caKeyId },
]);
const [rawKey] = raw.C_FindObjects(session, 1);
raw.C_FindObjectsFinal(session);
if (rawKey === undefined) throw new Error(`CA key ${caKeyId} not found on the token`);
const tbs = (await mint()).chain[0].raw.subarray(4, 4 + 400);
const bareSign = () => {
  const digest = createHash('sha256').update(tbs).digest();
  raw.C_SignInit(session, { mechanism: pkcs11js.CKM_ECDSA }, rawKey);
  return new Promise((resolve, reject) =>
    raw.C_Sign(session, digest, Buffer.alloc(64), (error, signature) =>
      error ? reject(error) : resolve(signature),
    ),
  );
};

/** Milliseconds per call of `once`, called back to back for SECONDS. */
async function perCall(once) {
  let count = 0;
  const started = performance.now();
  const deadline = started + SECONDS * 1000;
  while (performance.now() < deadline) {
    await once();
    count++;
  }
  return (performance.now() - started) / count;
}

const cases = { mint, parseAndMint, bareSign };
for (const once of Object.values(cases)) await perCall(once); // warm-up: JIT, SoftHSM caches
const samples = { mint: [], parseAndMint: [], bareSign: [] };
// Interleaved, and the order turned each round, so a drift in machine load does not favour one.
for (let round = 0; round < ROUNDS; round++) {
  const order = round % 2 === 0 ? ['bareSign', 'mint', 'parseAndMint'] : ['parseAndMint', 'mint', 'bareSign'];
  const got = {};
  for (const name of order) got[name] = await perCall(cases[name]);
  for (const name of order) samples[name].push(got[name]);
}

const sorted = (values) => [...values].sort((a, b) => a - b);
const stats = (values) => {
  const s = sorted(values);
  return { min: s[0], median: s[Math.floor(s.length / 2)], max: s.at(-1) };
};
const fmt = ({ min, median, max }, digits = 3) =>
  `min ${min.toFixed(digits)}  median ${median.toFixed(digits)}  max ${max.toFixed(digits)}`;
const ratios = (name) => samples[name].map((v, i) => v / samples.bareSign[i]);

console.log(
  `X.509-SVID issuance, CA key EC P-256 on SoftHSM2, one call at a time, ${SECONDS}s per sample, ${ROUNDS} rounds; load average ${loadavg()
    .map((n) => n.toFixed(1))
    .join(' ')}`,
);
console.log(`  raw SHA-256 + C_SignInit + C_Sign (ms):      ${fmt(stats(samples.bareSign))}`);
console.log(`  CA mintX509Svid (ms):                        ${fmt(stats(samples.mint))}`);
console.log(`  parseCsr + CA mintX509Svid (ms):             ${fmt(stats(samples.parseAndMint))}`);
console.log(`  ratio mint / raw sign (same round):          ${fmt(stats(ratios('mint')), 1)}`);
console.log(`  ratio parseCsr + mint / raw sign:            ${fmt(stats(ratios('parseAndMint')), 1)}`);

raw.C_CloseSession(session);
await datastore.close();
await keys.close();
rmSync(dir, { recursive: true, force: true });
