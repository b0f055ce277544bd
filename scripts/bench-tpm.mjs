#!/usr/bin/env node
// Agent-side TPM benchmark (not a test): the attestation path EK read + AK create +
// ActivateCredential + Quote, and per-command latencies, against a fresh swtpm (or the TPM named by
// BENCH_TCTI). Run after `tsc -p tsconfig.build.json`; it imports dist/. Figures depend on the
// machine and on swtpm; a hardware TPM is one to two orders of magnitude slower (tpm-notes §5).
// tpm2_makecredential stands in for the verifier and is left out of the timings.
import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const dist = new URL('../dist/tpm/index.js', import.meta.url);
const {
  Tpm,
  openTransport,
  commandName,
  readEkCertificates,
  loadEk,
  releaseEk,
  createAk,
  withAk,
  activateCredential,
  quotePcrs,
  pcrSelection,
  parseTpm2ToolsCredential,
  TpmWriter,
  TPM_ALG,
} = await import(dist).catch(() => {
  process.stderr.write('bench-tpm: dist/ is missing; run `npx tsc -p tsconfig.build.json` first\n');
  process.exit(1);
});

const N = Number(process.env.BENCH_N ?? 20);

async function freePortPair() {
  for (;;) {
    const port = await new Promise((resolve) => {
      const s = createServer();
      s.listen(0, '127.0.0.1', () => {
        const p = s.address().port;
        s.close(() => resolve(p));
      });
    });
    const free = await new Promise((resolve) => {
      const s = createServer();
      s.once('error', () => resolve(false));
      s.listen(port + 1, '127.0.0.1', () => s.close(() => resolve(true)));
    });
    if (free) return port;
  }
}

/** A throwaway swtpm like test/helpers/swtpm.ts starts (state and local CA in a temp dir). */
async function startSwtpm(dir) {
  const ca = join(dir, 'ca');
  execFileSync('mkdir', ['-p', join(dir, 'state'), ca]);
  writeFileSync(
    join(ca, 'ca.conf'),
    `statedir = ${ca}\nsigningkey = ${ca}/signkey.pem\nissuercert = ${ca}/issuercert.pem\ncertserial = ${ca}/certserial\n`,
  );
  writeFileSync(
    join(dir, 'setup.conf'),
    `create_certs_tool = /usr/bin/swtpm_localca\ncreate_certs_tool_config = ${ca}/ca.conf\n` +
      'create_certs_tool_options = /etc/swtpm-localca.options\nactive_pcr_banks = sha256\n',
  );
  execFileSync('swtpm_setup', [
    ...['--tpm2', '--tpmstate', join(dir, 'state'), '--config', join(dir, 'setup.conf')],
    ...['--create-ek-cert', '--create-platform-cert', '--lock-nvram'],
  ]);
  const port = await freePortPair();
  const child = spawn('swtpm', [
    ...['socket', '--tpm2', '--server', `type=tcp,port=${port},bindaddr=127.0.0.1`],
    ...['--ctrl', `type=tcp,port=${port + 1},bindaddr=127.0.0.1`, '--tpmstate', `dir=${join(dir, 'state')}`],
    ...['--flags', 'not-need-init,startup-clear'],
  ]);
  await new Promise((resolve) => setTimeout(resolve, 300));
  return { tcti: `swtpm:host=127.0.0.1,port=${port}`, stop: () => child.kill('SIGTERM') };
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const p95 = (xs) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(xs.length * 0.95))];
const ms = (x) => x.toFixed(2).padStart(8);

const dir = mkdtempSync(join(tmpdir(), 'ironroot-bench-tpm-'));
const sim = process.env.BENCH_TCTI ? { tcti: process.env.BENCH_TCTI, stop() {} } : await startSwtpm(dir);
const perCommand = new Map();
const inner = await openTransport(sim.tcti);
// Times every command at the transport, keyed by the command code in the header.
const timed = {
  description: inner.description,
  async send(command, timeoutMs) {
    const cc = Buffer.from(command.buffer, command.byteOffset, command.byteLength).readUInt32BE(6);
    const start = performance.now();
    try {
      return await inner.send(command, timeoutMs);
    } finally {
      const list = perCommand.get(cc) ?? [];
      list.push(performance.now() - start);
      perCommand.set(cc, list);
    }
  },
  close: () => inner.close(),
};
const tpm = new Tpm(timed);
const selection = [pcrSelection(TPM_ALG.SHA256, [0, 1, 2, 3, 4, 5, 6, 7])];

try {
  for (const [ekKind, akAlg] of [
    ['rsa2048', 'rsa2048'],
    ['rsa2048', 'ecc-p256'],
    ['ecc-p384-high', 'ecc-p256'],
  ]) {
    const totals = [];
    for (let i = 0; i < N; i++) {
      let t = performance.now();
      await readEkCertificates(tpm);
      const ek = await loadEk(tpm, ekKind);
      try {
        const ak = await createAk(tpm, ek, akAlg);
        let spent = performance.now() - t;
        // The verifier's part, untimed.
        writeFileSync(join(dir, 'ek.pub'), new TpmWriter().tpm2b(ek.public.raw).finish());
        writeFileSync(join(dir, 'secret'), 'benchmark-secret');
        execFileSync(
          'tpm2_makecredential',
          [
            ...['-T', 'none', '-u', join(dir, 'ek.pub'), '-s', join(dir, 'secret')],
            ...['-n', Buffer.from(ak.name).toString('hex'), '-o', join(dir, 'cred')],
          ],
          { stdio: 'ignore' },
        );
        const challenge = parseTpm2ToolsCredential(new Uint8Array(readFileSync(join(dir, 'cred'))));
        t = performance.now();
        await withAk(tpm, ek, ak, async (loaded) => {
          await activateCredential(tpm, ek, loaded, challenge);
          await quotePcrs(tpm, loaded, new Uint8Array(32), selection);
        });
        spent += performance.now() - t;
        totals.push(spent);
      } finally {
        await releaseEk(tpm, ek);
      }
    }
    process.stdout.write(
      `EK ${ekKind.padEnd(14)} AK ${akAlg.padEnd(9)} EK read + AK create + activate + quote (8 PCRs): ` +
        `median ${ms(median(totals))} ms, p95 ${ms(p95(totals))} ms over ${N}\n`,
    );
  }
  process.stdout.write(`\nper command (${sim.tcti}):\n`);
  for (const [cc, list] of [...perCommand].sort((a, b) => median(b[1]) - median(a[1]))) {
    process.stdout.write(
      `  ${commandName(cc).padEnd(26)} median ${ms(median(list))} ms  p95 ${ms(p95(list))} ms  n=${list.length}\n`,
    );
  }
} finally {
  await tpm.close();
  sim.stop();
  rmSync(dir, { recursive: true, force: true });
}
