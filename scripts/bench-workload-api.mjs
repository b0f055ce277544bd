#!/usr/bin/env node
// Workload API time to first response, as a ratio against bare grpc-js. Run after a build
// (`npm run bench:workload-api` does both): it imports the compiled server from dist/.
//
// Two server processes: ironroot's WorkloadApiServer (the agent's SVID cache as provider, with the
// real unix attestor; one SVID for the caller's uid) and a bare grpc-js server-streaming echo, both on Unix sockets. The echo answers with as many
// bytes as ironroot's first X509SVIDResponse holds (measured first), and the client reads both as
// raw bytes, so the two differ only in what the server does before it writes. For 1, 100 and 1000
// streams held open on a connection of their own, new streams are opened on a second connection,
// ironroot and echo alternating sample by sample; each round gives a p50 and a p99 per side from
// SAMPLES streams, and the ratios are printed as min / median / max over the rounds.
//
// nghttp2 ends a connection with GOAWAY once its peer has reset streams faster than about 1000 at
// once (then 33/s); every sample cancels its stream, so the sampling connection is replaced every
// RENEW_EVERY samples, on both sides alike. BENCH_WORKLOAD_API_NODE_FLAGS is passed to the ironroot
// server process (e.g. "--cpu-prof --cpu-prof-dir=/tmp/prof").
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import grpc from '@grpc/grpc-js';
import { reportFigure } from './lib/bench-figure.mjs';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const dist = join(root, 'dist');
if (!existsSync(join(dist, 'workload-api', 'index.js'))) {
  process.stderr.write('bench-workload-api: dist/ is missing; run `npx tsc -p tsconfig.build.json` first\n');
  process.exit(1);
}
const ROUNDS = Number(process.env.BENCH_WORKLOAD_API_ROUNDS ?? 5);
/** Per side and round: a p99 from 1000 samples rests on its 10 slowest. */
const SAMPLES = Number(process.env.BENCH_WORKLOAD_API_SAMPLES ?? 1000);
const WARMUP = 300;
/** Well under nghttp2's burst of 1000 stream resets per connection. */
const RENEW_EVERY = 400;
const HELD = [1, 100, 1000];

const raw = (b) => b;
const ECHO_PATH = '/Echo/Stream';
const IRONROOT_PATH = '/SpiffeWorkloadAPI/FetchX509SVID';

// ---- server processes -------------------------------------------------------------------------

async function serveIronroot(socketPath, cached) {
  const spiffe = await import(join(dist, 'spiffe', 'index.js'));
  const { WorkloadApiServer } = await import(join(dist, 'workload-api', 'index.js'));
  const { UnixAttestor } = await import(join(dist, 'agent', 'workloadattestor', 'unix.js'));
  const { SvidCache } = await import(join(dist, 'agent', 'cache.js'));
  const td = spiffe.TrustDomain.parse('bench.example');
  const caSigner = spiffe.createKeySigner(spiffe.newKeyPair('ec', { namedCurve: 'P-256' }).privateKey);
  const now = Date.now();
  const validity = { notBefore: new Date(now - 60_000), notAfter: new Date(now + 3_600_000) };
  const caCert = await spiffe.mintX509Ca(
    { trustDomain: td, publicKey: caSigner.publicKey, ...validity },
    caSigner,
  );
  // The agent's own SVID cache serves, as in the agent: entries as a sync brings them, an SVID
  // stored for each. `cached` entries for other workloads (unix:uid:<n> that never matches) plus
  // the caller's; none uses unix:sha256 or unix:path, as most deployments' entries do not.
  const provider = new SvidCache({
    trustDomain: 'bench.example',
    attestors: [new UnixAttestor()],
    bootstrapRoots: [caCert],
    mintJwt: () => Promise.reject(new Error('not benchmarked')),
  });
  const entries = [];
  const issued = [];
  for (let i = 0; i <= cached; i++) {
    const { privateKey, publicKey } = spiffe.newKeyPair('ec', { namedCurve: 'P-256' });
    const spiffeId = spiffe.SpiffeId.parse(`spiffe://bench.example/w${i}`);
    const leaf = await spiffe.mintX509Svid(
      { spiffeId, publicKey, ...validity },
      { certificate: caCert, signer: caSigner },
    );
    const selector = i === 0 ? `unix:uid:${process.getuid()}` : `unix:uid:${1_000_000 + i}`;
    entries.push({
      id: `entry-${i}`,
      spiffe_id: spiffeId.toString(),
      parent_id: 'spiffe://bench.example/node',
      selectors: [selector],
      x509_svid_ttl: 3600,
      jwt_svid_ttl: 0,
      dns_names: [],
      federates_with: [],
      hint: '',
      revision_number: 1,
      created_at: i,
      expires_at: 0,
    });
    issued.push({
      entryId: `entry-${i}`,
      entryRevision: 1,
      chain: [leaf.raw],
      expiresAt: Math.floor(validity.notAfter.getTime() / 1000),
      key: privateKey,
    });
  }
  provider.applyEntries({
    full: true,
    entries,
    deletedIds: [],
    cursor: { epoch: 'bench', revision: 1, scope: 'bench' },
    pages: 1,
  });
  provider.storeSvids(issued);
  const server = await WorkloadApiServer.listen({ provider, socketPath });
  process.stdout.write('ready\n');
  // A clean exit, so that --cpu-prof writes its profile.
  process.once('SIGTERM', () => server.close().then(() => process.exit(0)));
}

function serveEcho(socketPath, size) {
  const server = new grpc.Server();
  const reply = Buffer.alloc(size, 1);
  const method = {
    path: ECHO_PATH,
    requestStream: false,
    responseStream: true,
    requestSerialize: raw,
    requestDeserialize: raw,
    responseSerialize: raw,
    responseDeserialize: raw,
  };
  server.addService({ Stream: method }, { Stream: (call) => call.write(reply) });
  server.bindAsync(`unix://${socketPath}`, grpc.ServerCredentials.createInsecure(), () =>
    process.stdout.write('ready\n'),
  );
}

// ---- load generator ---------------------------------------------------------------------------

function startServer(args, nodeFlags = []) {
  const child = spawn(process.execPath, [...nodeFlags, fileURLToPath(import.meta.url), ...args], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  return new Promise((resolve) => {
    createInterface({ input: child.stdout }).once('line', () => resolve(child));
  });
}

function stopServer(child) {
  return new Promise((resolve) => {
    child.once('exit', resolve);
    child.kill('SIGTERM');
  });
}

function rssMiB(pid) {
  const kb = Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1]);
  return kb / 1024;
}

/** A client on a connection of its own (grpc-js otherwise shares one per target). */
function connection(socketPath) {
  return new grpc.Client(`unix://${socketPath}`, grpc.credentials.createInsecure(), {
    'grpc.use_local_subchannel_pool': 1,
    'grpc.max_receive_message_length': -1,
  });
}

/** Opens a stream; resolves with its first message (raw bytes) and the call. */
function openStream(client, path) {
  const metadata = new grpc.Metadata();
  metadata.set('workload.spiffe.io', 'true');
  const call = client.makeServerStreamRequest(path, raw, raw, Buffer.alloc(0), metadata);
  return new Promise((resolve, reject) => {
    call.once('data', (bytes) => resolve({ call, bytes }));
    call.on('error', (e) => {
      if (e.code !== grpc.status.CANCELLED) reject(e);
    });
  });
}

/** New streams on one side, on a sampling connection replaced every RENEW_EVERY streams. */
class Sampler {
  #count = 0;
  #client;

  constructor(socketPath, path) {
    this.socketPath = socketPath;
    this.path = path;
    this.#client = connection(socketPath);
  }

  /** Milliseconds from opening a new stream to its first message. */
  async sample() {
    if (++this.#count % RENEW_EVERY === 0) {
      this.#client.close();
      this.#client = connection(this.socketPath);
      // The new connection's handshake is not part of any sample.
      await openStream(this.#client, this.path).then(({ call }) => call.cancel());
    }
    const started = process.hrtime.bigint();
    const { call } = await openStream(this.#client, this.path);
    const ms = Number(process.hrtime.bigint() - started) / 1e6;
    call.cancel();
    return ms;
  }

  close() {
    this.#client.close();
  }
}

/** `held` streams open on a connection of their own, until `release`. */
async function holdStreams(socketPath, path, held) {
  const client = connection(socketPath);
  const streams = [];
  for (let i = 0; i < held; i += 100) {
    const batch = Array.from({ length: Math.min(100, held - i) }, () => openStream(client, path));
    streams.push(...(await Promise.all(batch)));
  }
  return () => {
    for (const { call } of streams) call.cancel();
    client.close();
  };
}

/** Nearest-rank percentile of sorted values. */
function percentile(sorted, p) {
  return sorted[Math.max(0, Math.ceil((p / 100) * sorted.length) - 1)];
}

function spread(values) {
  const sorted = [...values].sort((a, b) => a - b);
  return { min: sorted[0], median: percentile(sorted, 50), max: sorted[sorted.length - 1] };
}

const f = (n, digits = 3) => n.toFixed(digits);

async function row(ironrootSocket, echoSocket, held) {
  const releaseA = await holdStreams(ironrootSocket, IRONROOT_PATH, held);
  const releaseB = await holdStreams(echoSocket, ECHO_PATH, held);
  const a = new Sampler(ironrootSocket, IRONROOT_PATH);
  const b = new Sampler(echoSocket, ECHO_PATH);
  for (let i = 0; i < WARMUP; i++) {
    await a.sample();
    await b.sample();
  }
  const rounds = [];
  for (let r = 0; r < ROUNDS; r++) {
    const ta = [];
    const tb = [];
    for (let i = 0; i < SAMPLES; i++) {
      // Alternate which side goes first, so neither always follows the other's cancellation.
      if (i % 2 === 0) {
        ta.push(await a.sample());
        tb.push(await b.sample());
      } else {
        tb.push(await b.sample());
        ta.push(await a.sample());
      }
    }
    ta.sort((x, y) => x - y);
    tb.sort((x, y) => x - y);
    rounds.push({
      a50: percentile(ta, 50),
      a99: percentile(ta, 99),
      b50: percentile(tb, 50),
      b99: percentile(tb, 99),
    });
  }
  a.close();
  b.close();
  releaseA();
  releaseB();
  return rounds;
}

async function main() {
  const dir = mkdtempSync(join(tmpdir(), 'bench-wapi-'));
  const ironrootSocket = join(dir, 'agent.sock');
  const echoSocket = join(dir, 'echo.sock');
  const nodeFlags = (process.env.BENCH_WORKLOAD_API_NODE_FLAGS ?? '').split(' ').filter((s) => s !== '');
  try {
    const ironroot = await startServer(['serve-ironroot', ironrootSocket, '0'], nodeFlags);
    const idle = rssMiB(ironroot.pid);
    const probe = connection(ironrootSocket);
    const { call, bytes } = await openStream(probe, IRONROOT_PATH);
    call.cancel();
    probe.close();
    const echo = await startServer(['serve-echo', echoSocket, String(bytes.length)]);
    process.stdout.write(
      `node ${process.version}; FetchX509SVID (one SVID, ${bytes.length} B) vs grpc-js echo of ${bytes.length} B; ` +
        `${ROUNDS} rounds x ${SAMPLES} new streams per side, A/B interleaved; time to first response\n\n`,
    );
    process.stdout.write(
      'open streams   ironroot p50 / p99 ms   echo p50 / p99 ms   p50 ratio min / median / max   p99 ratio min / median / max\n',
    );
    for (const held of HELD) {
      const rounds = await row(ironrootSocket, echoSocket, held);
      const med = (key) => spread(rounds.map((r) => r[key])).median;
      const r50 = spread(rounds.map((r) => r.a50 / r.b50));
      const r99 = spread(rounds.map((r) => r.a99 / r.b99));
      process.stdout.write(
        `${String(held).padStart(12)}   ${f(med('a50')).padStart(7)} / ${f(med('a99')).padStart(7)}   ${f(med('b50')).padStart(7)} / ${f(med('b99')).padStart(7)}   ` +
          `${f(r50.min, 2)} / ${f(r50.median, 2)} / ${f(r50.max, 2)}`.padEnd(31) +
          `${f(r99.min, 2)} / ${f(r99.median, 2)} / ${f(r99.max, 2)}\n`,
      );
      reportFigure({
        figure: `Workload API first response p99, ${held} open streams ÷ bare grpc-js`,
        ...r99,
        goal: '≤ 1.3',
        met: r99.median <= 1.3,
      });
    }
    const afterLoad = rssMiB(ironroot.pid);
    await stopServer(ironroot);
    const loaded = await startServer(['serve-ironroot', join(dir, 'agent-1000.sock'), '1000']);
    process.stdout.write(
      `\nironroot server RSS: idle ${f(idle, 1)} MiB; idle with 1000 cached SVIDs in the provider ${f(rssMiB(loaded.pid), 1)} MiB; after the runs above ${f(afterLoad, 1)} MiB\ngrpc-js echo server RSS after the runs: ${f(rssMiB(echo.pid), 1)} MiB\n`,
    );
    await stopServer(loaded);
    await stopServer(echo);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

const [mode, socketPath, arg] = process.argv.slice(2);
if (mode === 'serve-ironroot') await serveIronroot(socketPath, Number(arg));
else if (mode === 'serve-echo') serveEcho(socketPath, Number(arg));
else await main();
