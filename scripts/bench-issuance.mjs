#!/usr/bin/env node
// X.509-SVID issuance through the server's CA code path (CertificateAuthority.mintX509Svid, the call
// the agent API's BatchNewX509SVID makes per CSR), with the CA key on SoftHSM2, against a bare
// pkcs11js SHA-256 + C_SignInit + C_Sign on the same key: how much an SVID costs beyond the one
// signature it needs. A second row adds parseCsr, as the agent API does before minting.
// Then the agent API's authentication of a call by the agent's client certificate (authenticateAgent,
// on every sync call), against the one ECDSA verification of the leaf it cannot do without: once
// with the SVID the previous call presented (the steady state) and once with one never seen before
// (more distinct SVIDs than the server keeps parsed).
// Last, the agent's side of an issuance: createCsr for a fresh P-256 key (what the agent does per
// SVID it renews, 1000 at once after a CA rotation) against a raw node:crypto ECDSA signature over the
// same CertificationRequestInfo bytes, and against the builder it replaced (@peculiar/x509's
// generator, kept here and in test/helpers/legacy-csr.ts only).
// One call at a time (sync issues its batch sequentially). Run after a build
// (`npm run bench:issuance`); it imports from dist/. Prints figures only; it asserts nothing.
//
// Environment: BENCH_SECONDS (per sample, default 1), BENCH_ROUNDS (default 7).
import { createHash, sign } from 'node:crypto';
import { rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import { reportFigure } from './lib/bench-figure.mjs';
import { benchToken, SOFTHSM_MODULE } from './lib/softhsm-token.mjs';

const MODULE = SOFTHSM_MODULE;
const SECONDS = Number(process.env.BENCH_SECONDS ?? 1);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 7);

const { dir, pinFile } = benchToken('ironroot-bench-issuance-');

const { Pkcs11KeyManager, parsePkcs11Uri } = await import('../dist/hsm/index.js');
const { CertificateAuthority } = await import('../dist/server/ca/authority.js');
const { authenticateAgent } = await import('../dist/server/agentapi/admission.js');
const { openSqliteDatastore } = await import('../dist/server/datastore/index.js');
const { createCsr, createKeySigner, newKeyPair, parseCsr, SpiffeId } = await import(
  '../dist/spiffe/index.js'
);
const { signerWebCrypto, signingParams } = await import('../dist/spiffe/signer-crypto.js');
const px = await import('../dist/spiffe/peculiar.js');
const { splitDer } = await import('../dist/spiffe/der.js');
const { readTlvs } = await import('../dist/spiffe/x509-extensions.js');
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
const workload = newKeyPair('ec', { namedCurve: 'P-256' });
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

// Agent SVIDs: one presented on every call, and more distinct ones than the parsed-certificate cache
// holds (1024), presented in turn, so each is new to it.
const agentCall = (leaf) => ({
  getAuthContext: () => ({ sslPeerCertificate: { raw: Buffer.from(leaf.raw) } }),
});
const agentSvid = async (n) =>
  (
    await ca.mintX509Svid({
      spiffeId: SpiffeId.parse(`spiffe://bench.example/agent/tpm/${n}`),
      publicKey: workload.publicKey,
      ttl: 3600,
    })
  ).chain[0];
const steadyLeaf = await agentSvid('steady');
const steady = agentCall(steadyLeaf);
const distinct = [];
for (let n = 0; n < 1100; n++) distinct.push(agentCall(await agentSvid(n)));
let next = 0;
const caPublicKey = ca.bundle().x509Authorities[0].publicKey;
const authenticate = (call) => authenticateAgent(call, ca, 'bench.example', clock);
const agentCases = {
  bareVerify: async () => steadyLeaf.verify(caPublicKey),
  authSame: async () => authenticate(steady),
  authNew: async () => authenticate(distinct[next++ % distinct.length]),
};

/**
 * Milliseconds per call of `once`, called back to back for SECONDS: wall time, and the process's CPU
 * time (user + system, SoftHSM's threads included), which other load on a shared machine colours less.
 */
async function perCall(once) {
  let count = 0;
  const cpu0 = process.cpuUsage();
  const started = performance.now();
  const deadline = started + SECONDS * 1000;
  while (performance.now() < deadline) {
    await once();
    count++;
  }
  const cpu = process.cpuUsage(cpu0);
  return { wall: (performance.now() - started) / count, cpu: (cpu.user + cpu.system) / 1000 / count };
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
const of = (name, field) => samples[name].map((sample) => sample[field]);
const ratios = (name, field) => samples[name].map((v, i) => v[field] / samples.bareSign[i][field]);

console.log(
  `X.509-SVID issuance, CA key EC P-256 on SoftHSM2, one call at a time, ${SECONDS}s per sample, ${ROUNDS} rounds; load average ${loadavg()
    .map((n) => n.toFixed(1))
    .join(' ')}`,
);
const agentSamples = { bareVerify: [], authSame: [], authNew: [] };
for (const once of Object.values(agentCases)) await perCall(once);
for (let round = 0; round < ROUNDS; round++) {
  const order =
    round % 2 === 0 ? ['bareVerify', 'authSame', 'authNew'] : ['authNew', 'authSame', 'bareVerify'];
  for (const name of order) agentSamples[name].push(await perCall(agentCases[name]));
}

for (const field of ['wall', 'cpu']) {
  console.log(` ${field === 'wall' ? 'wall time' : 'CPU time (user + system)'}, ms per call:`);
  console.log(`  raw SHA-256 + C_SignInit + C_Sign:   ${fmt(stats(of('bareSign', field)))}`);
  console.log(`  CA mintX509Svid:                     ${fmt(stats(of('mint', field)))}`);
  console.log(`  parseCsr + CA mintX509Svid:          ${fmt(stats(of('parseAndMint', field)))}`);
  console.log(`  ratio mint / raw sign (same round):  ${fmt(stats(ratios('mint', field)), 1)}`);
  console.log(`  ratio parseCsr + mint / raw sign:    ${fmt(stats(ratios('parseAndMint', field)), 1)}`);
  // Issue 13 states the figure the other way up: SVIDs per second ÷ raw signatures per second.
  const rates = (name) => ratios(name, field).map((ratio) => 1 / ratio);
  console.log(`  mint rate / raw sign rate:           ${fmt(stats(rates('mint')))}`);
  console.log(`  parseCsr + mint rate / raw rate:     ${fmt(stats(rates('parseAndMint')))}`);
}
const issuance = stats(ratios('parseAndMint', 'cpu').map((ratio) => 1 / ratio));
reportFigure({
  figure: 'X.509-SVID issuance (parseCsr + mint, CA key on SoftHSM2) rate ÷ raw C_Sign rate, CPU',
  ...issuance,
  goal: '≥ 0.5',
  met: issuance.median >= 0.5,
  digits: 3,
});
const agentOf = (name) => agentSamples[name].map((sample) => sample.cpu);
const agentRatio = (name) => agentSamples[name].map((v, i) => v.cpu / agentSamples.bareVerify[i].cpu);
console.log(' agent API call authentication, CPU ms per call:');
console.log(`  node:crypto leaf.verify(CA key):     ${fmt(stats(agentOf('bareVerify')))}`);
console.log(`  authenticateAgent, same SVID:        ${fmt(stats(agentOf('authSame')))}`);
console.log(`  authenticateAgent, SVID not seen:    ${fmt(stats(agentOf('authNew')))}`);
console.log(`  ratio same SVID / verify:            ${fmt(stats(agentRatio('authSame')), 1)}`);
console.log(`  ratio SVID not seen / verify:        ${fmt(stats(agentRatio('authNew')), 1)}`);

// createCsr as the agent calls it (the SPIFFE ID URI SAN only), the old builder, and the bare signature.
const csrSigner = createKeySigner(workload.privateKey);
const csrTemplate = { spiffeId: SpiffeId.parse('spiffe://bench.example/workload/csr-bench') };
const legacyCreateCsr = async () => {
  const { crypto, key } = signerWebCrypto(csrSigner);
  const exportKey = async () =>
    new Uint8Array(csrSigner.publicKey.export({ type: 'spki', format: 'der' })).buffer;
  const generated = await px.Pkcs10CertificateRequestGenerator.create(
    {
      name: new px.Name(''),
      keys: { publicKey: key, privateKey: key },
      signingAlgorithm: signingParams(csrSigner),
      extensions: [
        new px.SubjectAlternativeNameExtension(
          [{ type: 'url', value: csrTemplate.spiffeId.toString() }],
          true,
        ),
      ],
    },
    { subtle: { sign: crypto.subtle.sign, exportKey } },
  );
  return new Uint8Array(generated.rawData);
};
const csrOutcome = await createCsr(csrTemplate, csrSigner);
const legacyOutcome = await legacyCreateCsr();
// Both requests start with the same CertificationRequestInfo; the bare signature signs exactly it.
const infoOf = (der) => splitDer(readTlvs(der)[0].content)[0];
if (Buffer.compare(Buffer.from(infoOf(csrOutcome)), Buffer.from(infoOf(legacyOutcome))) !== 0) {
  throw new Error('bench-issuance: createCsr and the old builder encode different requests');
}
const csrInfo = new Uint8Array(infoOf(csrOutcome));
const csrCases = {
  bareSign: async () => sign('sha256', csrInfo, { key: workload.privateKey, dsaEncoding: 'ieee-p1363' }),
  createCsr: () => createCsr(csrTemplate, csrSigner),
  legacy: legacyCreateCsr,
};
const csrSamples = { bareSign: [], createCsr: [], legacy: [] };
for (const once of Object.values(csrCases)) await perCall(once);
for (let round = 0; round < ROUNDS; round++) {
  const order = round % 2 === 0 ? ['bareSign', 'createCsr', 'legacy'] : ['legacy', 'createCsr', 'bareSign'];
  for (const name of order) csrSamples[name].push(await perCall(csrCases[name]));
}
const csrOf = (name) => csrSamples[name].map((sample) => sample.cpu);
const csrRatio = (name, base) => csrSamples[name].map((v, i) => v.cpu / csrSamples[base][i].cpu);
console.log(' agent CSR for a P-256 key (ES256), CPU ms per call:');
console.log(`  node:crypto sign of the same info:   ${fmt(stats(csrOf('bareSign')))}`);
console.log(`  createCsr:                           ${fmt(stats(csrOf('createCsr')))}`);
console.log(`  old @peculiar/x509 builder:          ${fmt(stats(csrOf('legacy')))}`);
console.log(`  ratio createCsr / sign:              ${fmt(stats(csrRatio('createCsr', 'bareSign')), 2)}`);
console.log(`  ratio old builder / sign:            ${fmt(stats(csrRatio('legacy', 'bareSign')), 1)}`);
console.log(`  ratio old builder / createCsr:       ${fmt(stats(csrRatio('legacy', 'createCsr')), 1)}`);

raw.C_CloseSession(session);
await datastore.close();
await keys.close();
rmSync(dir, { recursive: true, force: true });
