#!/usr/bin/env node
// Workload API latency and memory. Run after a build (`npm run bench:workload-api` does both): it
// imports the compiled server from dist/.
//
// Each server runs in its own process so that its RSS is its own and the load generator does not
// share its event loop. For 1, 100 and 1000 FetchX509SVID streams held open, it measures the time
// from opening a *new* stream to its first response (the full attest + render + send path), and
// runs the same client against a bare grpc-js server-streaming echo on a Unix socket for a ratio.
import { spawn } from 'node:child_process';
import { generateKeyPairSync } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import grpc from '@grpc/grpc-js';
import protoLoader from '@grpc/proto-loader';
import { reportFigure } from './lib/bench-figure.mjs';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const dist = join(root, 'dist');
if (!existsSync(join(dist, 'workload-api', 'index.js'))) {
  process.stderr.write('bench-workload-api: dist/ is missing; run `npx tsc -p tsconfig.build.json` first\n');
  process.exit(1);
}
const PROTO = join(root, 'proto', 'workload.proto');
const ECHO = {
  path: '/Echo/Stream',
  requestStream: false,
  responseStream: true,
  requestSerialize: (b) => b,
  requestDeserialize: (b) => b,
  responseSerialize: (b) => b,
  responseDeserialize: (b) => b,
};

// ---- server processes -------------------------------------------------------------------------

async function serveIronroot(socketPath, cached) {
  const spiffe = await import(join(dist, 'spiffe', 'index.js'));
  const { WorkloadApiServer } = await import(join(dist, 'workload-api', 'index.js'));
  const { UnixAttestor } = await import(join(dist, 'agent', 'workloadattestor', 'unix.js'));
  const td = spiffe.TrustDomain.parse('bench.example');
  const caSigner = spiffe.createKeySigner(generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey);
  const now = Date.now();
  const validity = { notBefore: new Date(now - 60_000), notAfter: new Date(now + 3_600_000) };
  const caCert = await spiffe.mintX509Ca(
    { trustDomain: td, publicKey: caSigner.publicKey, ...validity },
    caSigner,
  );
  const bundle = new spiffe.SpiffeBundle(td, { x509Authorities: [caCert] });
  const entries = [];
  // `cached` SVIDs for other workloads (selector unix:uid:<n> that never matches) plus the caller's.
  for (let i = 0; i <= cached; i++) {
    const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const spiffeId = spiffe.SpiffeId.parse(`spiffe://bench.example/w${i}`);
    const leaf = await spiffe.mintX509Svid(
      { spiffeId, publicKey, ...validity },
      { certificate: caCert, signer: caSigner },
    );
    const selector = i === 0 ? `unix:uid:${process.getuid()}` : `unix:uid:${1_000_000 + i}`;
    entries.push({
      selector,
      svid: {
        spiffeId,
        chainDer: [leaf.raw],
        keyPkcs8Der: privateKey.export({ type: 'pkcs8', format: 'der' }),
      },
    });
  }
  const attestor = new UnixAttestor();
  const provider = {
    attest: (caller) => attestor.attest(caller.pid),
    identities: (selectors) => {
      const have = new Set(selectors);
      return {
        svids: entries.filter((e) => have.has(e.selector)).map((e) => e.svid),
        bundle,
        federatedBundles: [],
      };
    },
    mintJwtSvid: () => Promise.reject(new Error('not benchmarked')),
    subscribe: () => () => {},
  };
  await WorkloadApiServer.listen({ provider, socketPath });
  process.stdout.write('ready\n');
}

function serveEcho(socketPath) {
  const server = new grpc.Server();
  const reply = Buffer.alloc(800, 1); // about the size of one X509SVIDResponse
  server.addService({ Stream: ECHO }, { Stream: (call) => call.write(reply) });
  server.bindAsync(`unix://${socketPath}`, grpc.ServerCredentials.createInsecure(), () =>
    process.stdout.write('ready\n'),
  );
}

// ---- load generator ---------------------------------------------------------------------------

function startServer(mode, socketPath, cached = 0) {
  const child = spawn(process.execPath, [fileURLToPath(import.meta.url), mode, socketPath, String(cached)], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  return new Promise((resolve) => {
    createInterface({ input: child.stdout }).once('line', () => resolve(child));
  });
}

function rssMiB(pid) {
  const kb = Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1]);
  return kb / 1024;
}

function makeCaller(socketPath, kind) {
  const client = new grpc.Client(`unix://${socketPath}`, grpc.credentials.createInsecure(), {
    'grpc.max_receive_message_length': -1,
  });
  let method = ECHO;
  let request = Buffer.alloc(0);
  if (kind === 'ironroot') {
    method = protoLoader.loadSync(PROTO, { keepCase: true }).SpiffeWorkloadAPI.FetchX509SVID;
    request = {};
  }
  const metadata = new grpc.Metadata();
  metadata.set('workload.spiffe.io', 'true');
  const open = () =>
    client.makeServerStreamRequest(
      method.path,
      method.requestSerialize,
      method.responseDeserialize,
      request,
      metadata,
    );
  const firstResponse = () =>
    new Promise((resolve, reject) => {
      const started = process.hrtime.bigint();
      const call = open();
      call.once('data', () => {
        resolve(Number(process.hrtime.bigint() - started) / 1e6);
        call.cancel();
      });
      call.on('error', (e) => {
        if (e.code !== grpc.status.CANCELLED) reject(e);
      });
    });
  return { client, open, firstResponse };
}

function percentile(sorted, p) {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

async function measure(kind, socketPath, held, samples) {
  const caller = makeCaller(socketPath, kind);
  const open = [];
  for (let i = 0; i < held; i++) {
    const call = caller.open();
    call.on('error', () => {});
    open.push(new Promise((resolve) => call.once('data', () => resolve(call))));
  }
  const calls = await Promise.all(open);
  for (let i = 0; i < 200; i++) await caller.firstResponse(); // warm up the JIT on both sides
  const times = [];
  for (let i = 0; i < samples; i++) times.push(await caller.firstResponse());
  times.sort((a, b) => a - b);
  for (const c of calls) c.cancel();
  caller.client.close();
  return { p50: percentile(times, 50), p99: percentile(times, 99) };
}

async function main() {
  const dir = mkdtempSync(join(tmpdir(), 'bench-wapi-'));
  const samples = 500;
  try {
    const echo = await startServer('serve-echo', join(dir, 'echo.sock'));
    const ironroot = await startServer('serve-ironroot', join(dir, 'agent.sock'), 0);
    const idle = rssMiB(ironroot.pid);
    process.stdout.write(
      `node ${process.version}, ${samples} new FetchX509SVID streams per row, time to first response\n\n`,
    );
    process.stdout.write(
      'open streams   ironroot p50 / p99 (ms)   grpc-js echo p50 / p99 (ms)   ratio p50 / p99\n',
    );
    for (const held of [1, 100, 1000]) {
      const a = await measure('ironroot', join(dir, 'agent.sock'), held, samples);
      const b = await measure('echo', join(dir, 'echo.sock'), held, samples);
      process.stdout.write(
        `${String(held).padStart(12)}   ${a.p50.toFixed(3).padStart(8)} / ${a.p99.toFixed(3).padStart(8)}        ${b.p50.toFixed(3).padStart(8)} / ${b.p99.toFixed(3).padStart(8)}            ${(a.p50 / b.p50).toFixed(1).padStart(5)} / ${(a.p99 / b.p99).toFixed(1)}\n`,
      );
      // One sample per row: min, median and max are the same value.
      const p99 = a.p99 / b.p99;
      reportFigure({
        figure: `Workload API first response p99, ${held} open streams ÷ bare grpc-js`,
        min: p99,
        median: p99,
        max: p99,
        goal: '≤ 1.3',
        met: p99 <= 1.3,
      });
    }
    const afterLoad = rssMiB(ironroot.pid);
    ironroot.kill();
    const loaded = await startServer('serve-ironroot', join(dir, 'agent-1000.sock'), 1000);
    process.stdout.write(
      `\nironroot server RSS: idle ${idle.toFixed(1)} MiB; idle with 1000 cached SVIDs in the provider ${rssMiB(loaded.pid).toFixed(1)} MiB; after the runs above ${afterLoad.toFixed(1)} MiB\ngrpc-js echo server RSS after the runs: ${rssMiB(echo.pid).toFixed(1)} MiB\n`,
    );
    loaded.kill();
    echo.kill();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

const [mode, socketPath, cached] = process.argv.slice(2);
if (mode === 'serve-ironroot') await serveIronroot(socketPath, Number(cached));
else if (mode === 'serve-echo') serveEcho(socketPath);
else await main();
