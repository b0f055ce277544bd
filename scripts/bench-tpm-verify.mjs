#!/usr/bin/env node
// Verifier CPU cost per TPM attestation: MakeCredential to the EK (RSA-2048 and ECC P-384) and
// quote verification (RSA and ECC AK). The evidence is recorded once at start from a real swtpm
// with tpm2-tools, in a temporary directory; the timed loops only run the dist/ verifier code.
//
//   npx tsc -p tsconfig.build.json && node scripts/bench-tpm-verify.mjs
//
// The full rows add the third verifier step: parsing and replaying a real 102-event firmware log
// (keylime's mb_log.bin from test/fixtures/eventlogs) and comparing it with the quoted PCRs.
// The EK rows add what the server's EK worker does per attestation (ek-judge.ts): decode the EK
// certificate read from NV with both parsers, match its key to the EK, read its TCG SAN, and build
// and verify the chain to swtpm's local CA, with the trust store parsed once as the worker holds it.
// The figure `npm run bench` reports (full RSA attestation with EK judgement) is then measured over
// BENCH_ROUNDS rounds (default 5), alternating with its baseline, the unavoidable crypto. With
// BENCH_BASE_DIR=<another checkout, dist/ built>, the same rounds then compare this checkout's full
// RSA attestation with that checkout's, interleaved in this one process (a before/after).
import { execFile, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { promisify } from 'node:util';
import { reportFigure } from './lib/bench-figure.mjs';

const tpm = await import('../dist/tpm/index.js').catch(() => {
  console.error('dist/ is missing: run `npx tsc -p tsconfig.build.json` first');
  process.exit(1);
});
const { judgeEkCertificates } = await import('../dist/server/nodeattestor/ek-judge.js');
const exec = promisify(execFile);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 5);

function listen(port) {
  return new Promise((resolve) => {
    const server = createServer();
    server.once('error', () => resolve(undefined));
    server.listen(port, '127.0.0.1', () => {
      const { port: bound } = server.address();
      server.close(() => resolve(bound));
    });
  });
}

async function portPair() {
  for (let i = 0; i < 20; i++) {
    const port = await listen(0);
    if (port !== undefined && port < 65535 && (await listen(port + 1)) !== undefined) return port;
  }
  throw new Error('no two consecutive free ports');
}

/** Manufactures a swtpm with EKs, starts it, records EK publics and one quote per AK type. */
async function recordEvidence(dir) {
  const ca = join(dir, 'ca');
  const state = join(dir, 'state');
  await exec('mkdir', ['-p', ca, state]);
  await writeFile(
    join(dir, 'localca.conf'),
    `statedir = ${ca}\nsigningkey = ${ca}/signkey.pem\nissuercert = ${ca}/issuercert.pem\ncertserial = ${ca}/certserial\n`,
  );
  await writeFile(
    join(dir, 'setup.conf'),
    `create_certs_tool = /usr/bin/swtpm_localca\ncreate_certs_tool_config = ${dir}/localca.conf\n` +
      'create_certs_tool_options = /etc/swtpm-localca.options\nactive_pcr_banks = sha256\n',
  );
  await exec('swtpm_setup', [
    '--tpm2',
    '--tpmstate',
    state,
    '--create-ek-cert',
    '--config',
    join(dir, 'setup.conf'),
  ]);
  const port = await portPair();
  const child = spawn(
    'swtpm',
    [
      'socket',
      '--tpm2',
      '--tpmstate',
      `dir=${state}`,
      '--server',
      `type=tcp,port=${port},bindaddr=127.0.0.1`,
    ].concat([
      '--ctrl',
      `type=tcp,port=${port + 1},bindaddr=127.0.0.1`,
      '--flags',
      'not-need-init,startup-clear',
    ]),
    { stdio: 'ignore' },
  );
  const env = { ...process.env, TPM2TOOLS_TCTI: `swtpm:host=127.0.0.1,port=${port}` };
  const tool = (name, args) => exec(name, args, { cwd: dir, env });
  try {
    for (let i = 0; ; i++) {
      try {
        await tool('tpm2_getrandom', ['4']);
        break;
      } catch (err) {
        if (i > 50) throw err;
        await new Promise((r) => setTimeout(r, 100));
      }
    }
    const evidence = {};
    for (const [kind, handle, scheme, nv] of [
      ['rsa', '0x81010001', 'rsassa', '0x01c00002'],
      ['ecc', '0x81010016', 'ecdsa', '0x01c00016'],
    ]) {
      await tool('tpm2_readpublic', ['-c', handle, '-f', 'tss', '-o', `ek-${kind}.pub`]);
      await tool('tpm2_nvread', [nv, '-C', 'o', '-o', `ek-${kind}.crt`]);
      await tool(
        'tpm2_createak',
        ['-C', handle, '-c', `ak-${kind}.ctx`, '-G', kind, '-g', 'sha256', '-s', scheme].concat([
          '-u',
          `ak-${kind}.pub`,
          '-r',
          `ak-${kind}.priv`,
          '-n',
          `ak-${kind}.name`,
        ]),
      );
      const nonce = randomBytes(32);
      await tool(
        'tpm2_quote',
        ['-c', `ak-${kind}.ctx`, '-l', 'sha256:0,1,2,3,4,5,6,7', '-q', nonce.toString('hex')].concat([
          '-m',
          `q-${kind}.msg`,
          '-s',
          `q-${kind}.sig`,
          '-o',
          `q-${kind}.pcrs`,
          '-F',
          'values',
          '-g',
          'sha256',
        ]),
      );
      await tool('tpm2_flushcontext', ['-t']);
      const values = await readFile(join(dir, `q-${kind}.pcrs`));
      const pcrValues = [];
      for (let at = 0; at < values.length; at += 32) pcrValues.push(values.subarray(at, at + 32));
      const ak = tpm.parseTpm2bPublic(await readFile(join(dir, `ak-${kind}.pub`)));
      evidence[kind] = {
        ekPublic: await readFile(join(dir, `ek-${kind}.pub`)),
        ekCertificate: await readFile(join(dir, `ek-${kind}.crt`)),
        ek: tpm.parseTpm2bPublic(await readFile(join(dir, `ek-${kind}.pub`))).area,
        akName: tpm.objectName(ak),
        quote: {
          akPublic: ak.area,
          attest: await readFile(join(dir, `q-${kind}.msg`)),
          signature: await readFile(join(dir, `q-${kind}.sig`)),
          nonce,
          pcrSelection: [tpm.pcrSelection(tpm.TPM_ALG.SHA256, [0, 1, 2, 3, 4, 5, 6, 7])],
          pcrValues,
        },
      };
    }
    await tool('tpm2_shutdown', []);
    evidence.trust = {
      roots: tpm.parseCertificateBundle(
        await readFile(join(ca, 'swtpm-localca-rootca-cert.pem'), 'latin1'),
        'swtpm root',
      ),
      intermediates: tpm.parseCertificateBundle(
        await readFile(join(ca, 'issuercert.pem'), 'latin1'),
        'swtpm issuer',
      ),
    };
    return evidence;
  } finally {
    child.kill('SIGTERM');
  }
}

/** Runs `fn` in batches until it has used at least `budgetMs` of CPU; returns per-op figures. */
function measure(fn, budgetMs = 1500) {
  for (let i = 0; i < 50; i++) fn(); // warm-up: JIT, OpenSSL key caches
  let ops = 0;
  const cpu0 = process.cpuUsage();
  const wall0 = process.hrtime.bigint();
  let cpuMs = 0;
  while (cpuMs < budgetMs) {
    for (let i = 0; i < 50; i++) fn();
    ops += 50;
    const used = process.cpuUsage(cpu0);
    cpuMs = (used.user + used.system) / 1000;
  }
  const wallMs = Number(process.hrtime.bigint() - wall0) / 1e6;
  return { ops, cpuMsPerOp: cpuMs / ops, opsPerCpuSecond: (ops * 1000) / cpuMs, wallMsPerOp: wallMs / ops };
}

const dir = await mkdtemp(join(tmpdir(), 'ironroot-bench-tpmverify-'));
try {
  const evidence = await recordEvidence(dir);
  const credential = randomBytes(32);
  const eventLog = await readFile(new URL('../test/fixtures/eventlogs/keylime/mb_log.bin', import.meta.url));
  const replayLog = () => tpm.replay(tpm.parseEventLog(eventLog));
  const rows = [];
  for (const kind of ['rsa', 'ecc']) {
    const e = evidence[kind];
    const label = kind === 'rsa' ? 'RSA-2048 EK' : 'ECC P-384 EK';
    const akLabel = kind === 'rsa' ? 'RSA-2048 AK (RSASSA-SHA256)' : 'ECC P-256 AK (ECDSA-SHA256)';
    tpm.verifyQuote(e.quote); // fails loudly if the recorded evidence does not verify
    rows.push([`MakeCredential, ${label}`, measure(() => tpm.makeCredential(e.ek, e.akName, credential))]);
    rows.push([`verifyQuote, ${akLabel}, 8 PCRs`, measure(() => tpm.verifyQuote(e.quote))]);
    rows.push([
      `attestation (AK check + MakeCredential + verifyQuote), ${label}`,
      measure(() => {
        tpm.checkAkPublic(e.quote.akPublic);
        tpm.makeCredential(e.ek, e.akName, credential);
        tpm.verifyQuote(e.quote);
      }),
    ]);
    rows.push([
      `full attestation (above + replay of a 102-event log), ${label}`,
      measure(() => {
        tpm.checkAkPublic(e.quote.akPublic);
        tpm.makeCredential(e.ek, e.akName, credential);
        tpm.verifyQuote(e.quote);
        replayLog();
      }),
    ]);
    const ekJob = { ekPublic: e.ekPublic, certificates: [e.ekCertificate], chain: true, at: Date.now() };
    judgeEkCertificates(ekJob, evidence.trust); // fails loudly if the chain does not verify
    rows.push([
      `EK certificate judgement (parse, key, SAN, chain), ${label}`,
      measure(() => judgeEkCertificates(ekJob, evidence.trust)),
    ]);
    rows.push([
      `full attestation with EK judgement, ${label}`,
      measure(() => {
        judgeEkCertificates(ekJob, evidence.trust);
        tpm.checkAkPublic(e.quote.akPublic);
        tpm.makeCredential(e.ek, e.akName, credential);
        tpm.verifyQuote(e.quote);
        replayLog();
      }),
    ]);
  }
  rows.push(['event-log parse + replay alone (102 events)', measure(replayLog)]);
  console.log(`node ${process.version}, ${process.arch}, one thread; CPU time = user + system`);
  console.log(
    [
      'step'.padEnd(72),
      'ops/s (CPU)'.padStart(12),
      'ms/op (CPU)'.padStart(12),
      'ms/op (wall)'.padStart(13),
    ].join(''),
  );
  for (const [name, r] of rows)
    console.log(
      name.padEnd(72) +
        r.opsPerCpuSecond.toFixed(0).padStart(12) +
        r.cpuMsPerOp.toFixed(3).padStart(12) +
        r.wallMsPerOp.toFixed(3).padStart(13),
    );
  const quoteOnly = rows.find(([name]) => name.startsWith('verifyQuote, RSA'))[1];
  const full = rows.find(([name]) => name.startsWith('full attestation') && name.includes('RSA'))[1];
  console.log(
    `ratio full RSA attestation ÷ quote verification alone: ${(full.cpuMsPerOp / quoteOnly.cpuMsPerOp).toFixed(1)}×`,
  );
  const withEk = rows.find(
    ([name]) => name.startsWith('full attestation with EK') && name.includes('RSA'),
  )[1];
  console.log(
    `ratio full RSA attestation with EK judgement ÷ quote verification alone: ${(withEk.cpuMsPerOp / quoteOnly.cpuMsPerOp).toFixed(1)}×`,
  );
  // The figure itself over rounds, A/B interleaved with its baseline, the unavoidable crypto
  // (MakeCredential to the EK and the quote's signature), so a load change hits both alike.
  const rsa = evidence.rsa;
  const rsaEkJob = { ekPublic: rsa.ekPublic, certificates: [rsa.ekCertificate], chain: true, at: Date.now() };
  const whole = () => {
    judgeEkCertificates(rsaEkJob, evidence.trust);
    tpm.checkAkPublic(rsa.quote.akPublic);
    tpm.makeCredential(rsa.ek, rsa.akName, credential);
    tpm.verifyQuote(rsa.quote);
    replayLog();
  };
  const crypto = () => {
    tpm.makeCredential(rsa.ek, rsa.akName, credential);
    tpm.verifyQuote(rsa.quote);
  };
  const wholeMs = [];
  const ratios = [];
  for (let round = 0; round < ROUNDS; round++) {
    const a = measure(whole, 500).cpuMsPerOp;
    const b = measure(crypto, 500).cpuMsPerOp;
    wholeMs.push(a);
    ratios.push(a / b);
  }
  const spread = (values) => {
    const sorted = [...values].sort((x, y) => x - y);
    return { min: sorted[0], median: sorted[Math.floor(sorted.length / 2)], max: sorted.at(-1) };
  };
  const perAttestation = spread(wholeMs);
  const overCrypto = spread(ratios);
  console.log(
    `full RSA attestation with EK judgement over ${ROUNDS} rounds, CPU ms min / median / max: ` +
      `${perAttestation.min.toFixed(3)} / ${perAttestation.median.toFixed(3)} / ${perAttestation.max.toFixed(3)}; ` +
      `÷ the unavoidable crypto (MakeCredential + quote signature): ` +
      `${overCrypto.min.toFixed(1)} / ${overCrypto.median.toFixed(1)} / ${overCrypto.max.toFixed(1)}×`,
  );
  // Before/after: BENCH_BASE_DIR names another checkout with its own dist/ built (the commit to
  // compare with); the same evidence goes through both, in interleaved rounds, in this process.
  const baseDir = process.env.BENCH_BASE_DIR;
  if (baseDir !== undefined) {
    const base = await import(pathToFileURL(join(baseDir, 'dist/tpm/index.js')).href);
    const baseJudge = (
      await import(pathToFileURL(join(baseDir, 'dist/server/nodeattestor/ek-judge.js')).href)
    ).judgeEkCertificates;
    const wholeBase = () => {
      baseJudge(rsaEkJob, evidence.trust);
      base.checkAkPublic(rsa.quote.akPublic);
      base.makeCredential(rsa.ek, rsa.akName, credential);
      base.verifyQuote(rsa.quote);
      base.replay(base.parseEventLog(eventLog));
    };
    const thisMs = [];
    const baseMs = [];
    const overBase = [];
    for (let round = 0; round < ROUNDS; round++) {
      // Alternate which goes first, so a load change within a round does not favour one side.
      const [first, second] = round % 2 === 0 ? [whole, wholeBase] : [wholeBase, whole];
      const a = measure(first, 500).cpuMsPerOp;
      const b = measure(second, 500).cpuMsPerOp;
      const [mine, theirs] = round % 2 === 0 ? [a, b] : [b, a];
      thisMs.push(mine);
      baseMs.push(theirs);
      overBase.push(mine / theirs);
    }
    const show = (s, digits) =>
      `${s.min.toFixed(digits)} / ${s.median.toFixed(digits)} / ${s.max.toFixed(digits)}`;
    console.log(
      `before/after over ${ROUNDS} interleaved rounds, CPU ms min / median / max: ${baseDir} ` +
        `${show(spread(baseMs), 3)}, this checkout ${show(spread(thisMs), 3)}; this ÷ that: ${show(spread(overBase), 2)}`,
    );
  }
  reportFigure({
    figure: 'server CPU ms per TPM attestation (EK chain + MakeCredential + quote + replay), RSA',
    ...perAttestation,
    goal: '≤ 1.5 ms',
    met: perAttestation.median <= 1.5,
    digits: 3,
  });
} finally {
  await rm(dir, { recursive: true, force: true });
}
