/**
 * `npm run demo`: ironroot end to end on embedded defaults, in one temporary directory. It makes a
 * SoftHSM2 token and a swtpm with EK certificates, starts `ironroot-server` (SQLite, CA keys on the
 * token, the swtpm local CA as trusted EK issuer) and `ironroot-agent` (TPM attestation), registers
 * workloads under the agent, fetches SVIDs over the SPIFFE Workload API, lets two workload
 * processes talk mutual TLS, prints what happened, and removes everything it made — also when a
 * step fails or on Ctrl-C.
 *
 * @module
 */
import type { X509Certificate } from 'node:crypto';
import { chmod, copyFile, mkdir, mkdtemp, realpath, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { TrustDomain } from '../spiffe/index.js';
import { WorkloadApiClient } from '../workload-api/client.js';
import { DemoError, StepError } from './errors.js';
import { type Child, Children, type LogLine } from './processes.js';
import { createToken } from './softhsm.js';
import { startTpm } from './swtpm.js';
import { type DemoWorkloads, workloadIdentities } from './workloads.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const SERVER_BIN = join(ROOT, 'bin', 'ironroot-server.js');
const AGENT_BIN = join(ROOT, 'bin', 'ironroot-agent.js');
const WORKLOAD_JS = join(ROOT, 'dist', 'demo', 'workload.js');
const DEFAULT_TRUST_DOMAIN = 'example.org';
const JWT_AUDIENCE = 'ironroot-demo';
const START_TIMEOUT_MS = 60_000;

export const USAGE = `Usage: npm run demo [-- OPTIONS]    (or: node scripts/demo.mjs [OPTIONS] after a build)

Runs ironroot end to end in a temporary directory: a SoftHSM2 token and a swtpm with EK
certificates, ironroot-server (SQLite, CA keys on the token) and ironroot-agent (TPM attestation),
workload entries, an X.509-SVID and a JWT-SVID over the SPIFFE Workload API, and two workloads
talking mutual TLS. Prints a summary, then stops every process and removes the directory.

Options:
  --keep                 keep everything running after the summary, print the sockets and example
                         commands, and clean up on Ctrl-C
  --trust-domain NAME    trust domain (default ${DEFAULT_TRUST_DOMAIN})
  -h, --help             print this help

Exit status: 0 when every step passed; 1 when a step failed (the message names the step);
2 for a bad command line; 130 or 143 when interrupted (SIGINT, SIGTERM), but 0 when Ctrl-C
ends --keep.
`;

interface Options {
  readonly keep: boolean;
  readonly trustDomain: TrustDomain;
}

class UsageError extends Error {}

function parseOptions(argv: readonly string[]): Options | 'help' {
  let values: { keep?: boolean; 'trust-domain'?: string; help?: boolean };
  try {
    ({ values } = parseArgs({
      args: [...argv],
      options: {
        keep: { type: 'boolean' },
        'trust-domain': { type: 'string' },
        help: { type: 'boolean', short: 'h' },
      },
      strict: true,
      allowPositionals: false,
    }));
  } catch (error) {
    throw new UsageError((error as Error).message);
  }
  if (values.help) return 'help';
  let trustDomain: TrustDomain;
  try {
    trustDomain = TrustDomain.parse(values['trust-domain'] ?? DEFAULT_TRUST_DOMAIN);
  } catch (error) {
    throw new UsageError(`--trust-domain: ${(error as Error).message}`);
  }
  return { keep: values.keep === true, trustDomain };
}

/** Progress, the summary and the --keep hints go to standard output; failures to standard error. */
function out(text = ''): void {
  process.stdout.write(`${text}\n`);
}

/** A log line's message and level: a name in the default `json` format, pino's number (50 error, 60 fatal) in `pino`. */
function message(line: LogLine): string {
  return typeof line.msg === 'string' ? line.msg : '';
}
function isError(line: LogLine): boolean {
  if (typeof line.level === 'number') return line.level >= 50;
  return line.level === 'error' || line.level === 'fatal';
}

interface TpmInfo {
  tpm: { manufacturer: string; vendor: string; firmwareVersion: string };
  endorsementKeys: { kind: string; handle: string; publicKeySha256: string }[];
  ekCertificates: { kind: string; index: string; subject: string; issuer: string }[];
}

interface AgentRecord {
  spiffe_id: string;
  attestation_type: string;
  x509_svid_expires_at: number;
  ek_hash: string;
  selectors: { type: string; value: string }[];
}

interface EntryResults {
  results: { status: { code: number; message: string }; entry?: { id: string; spiffe_id: string } }[];
}

function parseJson<T>(what: string, text: string): T {
  try {
    return JSON.parse(text) as T;
  } catch {
    throw new DemoError(`${what} did not print JSON: ${text.slice(0, 200)}`);
  }
}

/** State shared by the steps, and everything cleanup must undo. */
class Demo {
  readonly options: Options;
  dir = '';
  children: Children | undefined;
  server: Child | undefined;
  agent: Child | undefined;
  adminSocket = '';
  workloadSocket = '';
  agentDataDir = '';
  #step = 0;
  #signal: NodeJS.Signals | undefined;
  #interrupt: ((error: Error) => void) | undefined;
  readonly #interrupted: Promise<never>;

  constructor(options: Options) {
    this.options = options;
    this.#interrupted = new Promise<never>((_, reject) => {
      this.#interrupt = reject;
    });
    // A rejection nobody awaits yet must not crash the process.
    this.#interrupted.catch(() => undefined);
  }

  interrupt(signal: NodeJS.Signals): void {
    this.#signal ??= signal;
    this.#interrupt?.(new InterruptError(signal));
  }

  /** Runs one named step; a failure (or an interruption while it runs) names the step. */
  async step<T>(title: string, run: () => Promise<T>): Promise<T> {
    this.#step++;
    out(`[${this.#step}] ${title}`);
    const running = run();
    running.catch(() => undefined);
    try {
      return await Promise.race([running, this.#interrupted]);
    } catch (error) {
      if (error instanceof InterruptError) throw error;
      // Ctrl-C in a terminal signals the children too; their exit may be seen before our own signal.
      await new Promise((resolve) => setTimeout(resolve, 200));
      if (this.#signal !== undefined) throw new InterruptError(this.#signal);
      throw new StepError(this.#step, title, error);
    }
  }

  /** Every process of the demo; there from step 1 on. */
  get processes(): Children {
    if (this.children === undefined)
      throw new DemoError('no process registry before the demo directory exists');
    return this.children;
  }

  admin(what: string, args: readonly string[]): Promise<string> {
    return this.processes
      .run(what, process.execPath, [SERVER_BIN, ...args, '--admin-socket', this.adminSocket])
      .then((r) => r.stdout);
  }

  async cleanup(): Promise<void> {
    await this.children?.stopAll();
    if (this.dir !== '') await rm(this.dir, { recursive: true, force: true });
  }

  waitInterrupted(): Promise<never> {
    return this.#interrupted;
  }
}

class InterruptError extends Error {
  readonly signal: NodeJS.Signals;
  constructor(signal: NodeJS.Signals) {
    super(`interrupted by ${signal}`);
    this.signal = signal;
  }
}

async function startServer(demo: Demo, tokenUri: string, ekCaDir: string): Promise<number> {
  const children = demo.processes;
  const dir = join(demo.dir, 'server');
  await mkdir(dir, { mode: 0o700 });
  demo.adminSocket = join(dir, 'admin.sock');
  const uid = process.getuid?.() ?? 0;
  // JSON is YAML: the config file is written without a YAML library.
  const config = {
    trust_domain: demo.options.trustDomain.name,
    data_dir: join(dir, 'data'),
    admin_socket: demo.adminSocket,
    admin_allowed_uids: [...new Set([0, uid])],
    key_manager: tokenUri,
    health_address: '127.0.0.1:0',
    bind_address: '127.0.0.1:0',
    tpm_attestation: { measured_boot: 'none', ek_ca_dir: ekCaDir, pcrs: 'sha256:0-7' },
  };
  const configFile = join(dir, 'server.yaml');
  await writeFile(configFile, `${JSON.stringify(config, null, 2)}\n`, { mode: 0o600 });
  const server = children.start('ironroot-server', process.execPath, [
    SERVER_BIN,
    'run',
    '--config',
    configFile,
  ]);
  demo.server = server;
  const fail = (line: LogLine) => (isError(line) ? message(line) : undefined);
  const port = await server.waitFor(
    'agent API address in its log',
    (line) =>
      message(line) === 'agent API listening' && typeof line.port === 'number' ? line.port : undefined,
    { timeoutMs: START_TIMEOUT_MS, fail },
  );
  await server.waitFor(
    'start-up',
    (line) => (message(line) === 'ironroot-server started' ? true : undefined),
    {
      timeoutMs: START_TIMEOUT_MS,
      fail,
    },
  );
  return port;
}

async function startAgent(demo: Demo, port: number, tcti: string): Promise<string> {
  const children = demo.processes;
  const dir = join(demo.dir, 'agent');
  await mkdir(dir, { mode: 0o700 });
  const bundleFile = join(dir, 'bootstrap-bundle.pem');
  await writeFile(
    bundleFile,
    await demo.admin('ironroot-server bundle show', ['bundle', 'show', '--format', 'pem']),
  );
  demo.agentDataDir = join(dir, 'data');
  demo.workloadSocket = join(dir, 'workload.sock');
  const config = {
    server_address: `127.0.0.1:${port}`,
    trust_domain: demo.options.trustDomain.name,
    trust_bundle: bundleFile,
    data_dir: demo.agentDataDir,
    socket_path: demo.workloadSocket,
    attestation: 'tpm',
    tcti,
    ek: 'auto',
    // swtpm runs no firmware, so there is no measured-boot log; the host's own log (if any) belongs
    // to another TPM and must not be sent.
    event_log_path: 'none',
    retry_initial: '200ms',
    retry_max: '2s',
    // Entries registered a moment ago reach the agent within a second.
    sync_interval: '1s',
  };
  const configFile = join(dir, 'agent.yaml');
  await writeFile(configFile, `${JSON.stringify(config, null, 2)}\n`, { mode: 0o600 });
  const agent = children.start('ironroot-agent', process.execPath, [
    AGENT_BIN,
    'run',
    '--config',
    configFile,
  ]);
  demo.agent = agent;
  return agent.waitFor(
    'attestation',
    (line) =>
      message(line) === 'node attested' && typeof line.agent_id === 'string' ? line.agent_id : undefined,
    {
      timeoutMs: START_TIMEOUT_MS,
      fail: (line) => {
        if (isError(line)) return message(line);
        if (message(line).startsWith('the server refuses this agent'))
          return `attestation refused: ${String(line.reason)}: ${String(line.err_message)}`;
        return undefined;
      },
    },
  );
}

function selectorValues(record: AgentRecord, prefix: string): string[] {
  return record.selectors
    .filter((s) => s.type === 'tpm' && s.value.startsWith(prefix))
    .map((s) => s.value.slice(prefix.length));
}

/** PCR numbers as ranges: 0,1,2,3,7 → 0-3,7. */
function ranges(numbers: readonly number[]): string {
  const sorted = [...numbers].sort((a, b) => a - b);
  const parts: string[] = [];
  for (let i = 0; i < sorted.length; ) {
    let j = i;
    while (j + 1 < sorted.length && sorted[j + 1] === (sorted[j] ?? 0) + 1) j++;
    parts.push(i === j ? `${sorted[i]}` : `${sorted[i]}-${sorted[j]}`);
    i = j + 1;
  }
  return parts.join(',');
}

function describeAgent(agentId: string, record: AgentRecord, tpm: TpmInfo): string[] {
  const hash = agentId.slice(agentId.lastIndexOf('/') + 1);
  const ek = tpm.endorsementKeys.find((k) => k.publicKeySha256 === hash);
  const cert = ek ? tpm.ekCertificates.find((c) => c.kind === ek.kind) : undefined;
  const pcrs = selectorValues(record, 'pcr:');
  const banks = new Map<string, number[]>();
  for (const value of pcrs) {
    const [bank, pcr] = value.split(':');
    if (bank !== undefined && pcr !== undefined) banks.set(bank, [...(banks.get(bank) ?? []), Number(pcr)]);
  }
  const secureBoot = selectorValues(record, 'secureboot:')[0];
  return [
    `  agent          ${agentId}`,
    `    attested by  ${record.attestation_type} (EK hash ${record.ek_hash === hash ? 'matches the ID' : `MISMATCH: ${record.ek_hash}`})`,
    `    EK           ${ek ? `${ek.kind} at ${ek.handle}` : 'not found on the TPM'}`,
    `    EK cert      issuer "${cert?.issuer ?? 'none'}"`,
    `    TPM          manufacturer ${selectorValues(record, 'manufacturer:')[0] ?? tpm.tpm.manufacturer}, model ${selectorValues(record, 'model:')[0] ?? tpm.tpm.vendor}, firmware ${selectorValues(record, 'firmware-version:')[0] ?? tpm.tpm.firmwareVersion}`,
    `    PCRs quoted  ${[...banks].map(([bank, list]) => `${bank}:${ranges(list)}`).join(' ') || 'none'}`,
    `    secure boot  ${secureBoot ?? 'unknown (no measured-boot event log: swtpm runs no firmware)'}`,
    `    agent SVID   expires ${new Date(record.x509_svid_expires_at * 1000).toISOString()}`,
  ];
}

function certName(cert: X509Certificate): string {
  // node:crypto gives no string at all for an empty subject.
  return (cert.subject ?? '').replaceAll('\n', ', ') || cert.subjectAltName || '(empty subject)';
}

async function run(demo: Demo): Promise<void> {
  const td = demo.options.trustDomain;
  await demo.step('create the demo directory', async () => {
    demo.dir = await realpath(await mkdtemp(join(tmpdir(), 'ironroot-demo-')));
    await mkdir(join(demo.dir, 'logs'), { mode: 0o700 });
    demo.children = new Children(join(demo.dir, 'logs'));
    out(`    ${demo.dir} (removed at exit)`);
  });
  const token = await demo.step('create a SoftHSM2 token for the CA keys', async () => {
    const dir = join(demo.dir, 'softhsm');
    await mkdir(dir, { mode: 0o700 });
    return createToken(dir);
  });
  out(`    token "${token.label}", user PIN in a 0600 file (never printed)`);
  const tpm = await demo.step('manufacture a swtpm with EK certificates (swtpm-localca) and start it', () =>
    startTpm(join(demo.dir, 'swtpm'), demo.processes),
  );
  out(`    ${tpm.tcti} (pid ${tpm.child.process.pid})`);
  const tpmInfo = await demo.step('read the TPM as the agent sees it (ironroot-agent tpm info)', async () => {
    const { stdout } = await demo.processes.run('ironroot-agent tpm info', process.execPath, [
      AGENT_BIN,
      'tpm',
      'info',
      '--tcti',
      tpm.tcti,
      '--output',
      'json',
    ]);
    return parseJson<TpmInfo>('ironroot-agent tpm info', stdout);
  });
  out(`    EKs: ${tpmInfo.endorsementKeys.map((k) => k.kind).join(', ')}`);
  const port = await demo.step(
    'start ironroot-server (SQLite, CA keys on the token, swtpm-localca trusted)',
    () => startServer(demo, token.uri, tpm.ekCaDir),
  );
  out(
    `    pid ${demo.server?.process.pid}, agent API on 127.0.0.1:${port}, admin socket ${demo.adminSocket}`,
  );
  const agentId = await demo.step('start ironroot-agent and attest the node with the TPM', () =>
    startAgent(demo, port, tpm.tcti),
  );
  out(`    pid ${demo.agent?.process.pid}, ${agentId}`);
  const authorities = await demo.step(
    'read the CA keys from the server (ironroot-server localauthority)',
    async () => {
      const active = async (kind: 'x509' | 'jwt') => {
        const stdout = await demo.admin(`ironroot-server localauthority ${kind} show`, [
          'localauthority',
          kind,
          'show',
          '--output',
          'json',
        ]);
        const { authorities } = parseJson<{ authorities: { authority_id: string; state: string }[] }>(
          `ironroot-server localauthority ${kind} show`,
          stdout,
        );
        const key = authorities.find((a) => a.state === 'active');
        if (key === undefined) throw new DemoError(`the server has no active ${kind} authority`);
        return key.authority_id;
      };
      return { x509: await active('x509'), jwt: await active('jwt') };
    },
  );
  const record = await demo.step(
    'read the attested node from the server (ironroot-server agent show)',
    async () => {
      const stdout = await demo.admin('ironroot-server agent show', [
        'agent',
        'show',
        '--spiffe-id',
        agentId,
        '--output',
        'json',
      ]);
      return parseJson<AgentRecord>('ironroot-server agent show', stdout);
    },
  );

  const ids = workloadIdentities(
    td,
    { uid: process.getuid?.() ?? 0, gid: process.getgid?.() ?? 0 },
    await realpath(process.execPath),
    join(demo.dir, 'bin', 'node-client'),
  );
  if (ids.client.node !== ids.server.node) {
    await demo.step('copy node for the client workload (told apart by unix:path when not root)', async () => {
      await mkdir(join(demo.dir, 'bin'), { mode: 0o700 });
      await copyFile(ids.server.node, ids.client.node);
      await chmod(ids.client.node, 0o700);
    });
  }
  await demo.step('register the workload entries under the agent', async () => {
    for (const entry of [ids.user, ids.server, ids.client]) {
      const stdout = await demo.admin('ironroot-server entry create', [
        'entry',
        'create',
        '--spiffe-id',
        entry.id.toString(),
        '--parent-id',
        agentId,
        ...entry.selectors.flatMap((s) => ['--selector', s]),
        '--output',
        'json',
      ]);
      const [result] = parseJson<EntryResults>('ironroot-server entry create', stdout).results;
      if (result?.entry === undefined)
        throw new DemoError(`entry ${entry.id}: ${result?.status.message ?? 'no result'}`);
      out(`    ${entry.id}  ${entry.selectors.join(' ')}`);
    }
  });

  const address = `unix://${demo.workloadSocket}`;
  const fetched = await demo.step('fetch an X.509-SVID and a JWT-SVID through the Workload API', async () => {
    const client = new WorkloadApiClient({ address });
    try {
      const deadline = Date.now() + START_TIMEOUT_MS;
      for (;;) {
        try {
          const context = await client.fetchX509Context();
          const svid = context.svids.find((s) => s.svid.id.equals(ids.user.id))?.svid;
          if (svid !== undefined) {
            const jwt = await client.fetchJwtSvid({ audience: [JWT_AUDIENCE], spiffeId: ids.user.id });
            const validated = await client.validateJwtSvid(jwt.token, JWT_AUDIENCE);
            return { svid, bundles: context.bundles, jwt, validated };
          }
        } catch (error) {
          if (Date.now() > deadline) throw error;
        }
        if (Date.now() > deadline)
          throw new DemoError(`the agent at ${address} never delivered ${ids.user.id}`, demo.agent);
        await new Promise((resolve) => setTimeout(resolve, 250));
      }
    } finally {
      client.close();
    }
  });

  const exchange = await demo.step('run two workloads that talk mutual TLS with their SVIDs', () =>
    runWorkloads(demo, address, ids),
  );

  const [leaf, ...intermediates] = fetched.svid.certificates;
  const roots = fetched.bundles.getX509BundleForTrustDomain(td)?.authorities ?? [];
  out();
  out('ironroot demo: summary');
  out(`  trust domain   ${td.name}`);
  out(`  server         SQLite datastore; CA keys on SoftHSM token "${token.label}"`);
  out(`    X.509 CA key ${authorities.x509}`);
  out(`    JWT key      ${authorities.jwt}`);
  for (const line of describeAgent(agentId, record, tpmInfo)) out(line);
  out(`  workload       ${fetched.svid.id}  (${ids.user.selectors.join(' ')})`);
  if (leaf !== undefined) {
    out(`    X.509-SVID   serial ${leaf.serialNumber}, expires ${new Date(leaf.validTo).toISOString()}`);
    out(
      `    chain        ${[
        `leaf ${leaf.subjectAltName ?? ''}`,
        ...intermediates.map((c) => `intermediate ${certName(c)}`),
        ...roots
          .filter((r) => [leaf, ...intermediates].some((c) => c.checkIssued(r)))
          .map((r) => `root ${certName(r)} (in the bundle; key on the token)`),
      ].join(' ← ')}`,
    );
  }
  out(`    bundle       ${roots.length} X.509 root(s) for ${td.name}`);
  out(
    `    JWT-SVID     sub=${fetched.jwt.id} aud=${fetched.jwt.audience.join(',')} exp=${fetched.jwt.expiresAt.toISOString()} alg=${fetched.jwt.header.alg} kid=${fetched.jwt.header.kid ?? 'none'}`,
  );
  out(`                 validated by the agent: ${fetched.validated.spiffeId}`);
  out(`  mTLS           ${exchange.client.self} → ${exchange.server.self}`);
  out(`    server saw   ${exchange.server.peer}: "${exchange.server.received}"`);
  out(`    client saw   ${exchange.client.peer}: "${exchange.client.received}"`);
  out('  mTLS exchange: OK');

  if (demo.options.keep) {
    out();
    out('Kept running (--keep). Try, in another shell:');
    out(`  export SPIFFE_ENDPOINT_SOCKET=${address}`);
    out(`  node ${AGENT_BIN} api fetch x509`);
    out(`  node ${AGENT_BIN} api fetch jwt --audience ${JWT_AUDIENCE}`);
    out(`  node ${AGENT_BIN} healthcheck --data-dir ${demo.agentDataDir}`);
    out(`  node ${SERVER_BIN} entry show --admin-socket ${demo.adminSocket}`);
    out(`  node ${SERVER_BIN} agent list --admin-socket ${demo.adminSocket}`);
    out(`Workload API socket ${demo.workloadSocket}`);
    out(`Admin socket        ${demo.adminSocket}`);
    out(`Logs                ${join(demo.dir, 'logs')}`);
    out('Press Ctrl-C to stop everything and remove the directory.');
    await demo.waitInterrupted();
  }
}

interface Exchanged {
  self: string;
  peer: string;
  received: string;
}

async function runWorkloads(
  demo: Demo,
  address: string,
  ids: DemoWorkloads,
): Promise<{ server: Exchanged; client: Exchanged }> {
  const children = demo.processes;
  const env = { ...process.env, SPIFFE_ENDPOINT_SOCKET: address };
  const exchanged = (line: LogLine): Exchanged | undefined =>
    line.event === 'exchanged' &&
    typeof line.self === 'string' &&
    typeof line.peer === 'string' &&
    typeof line.received === 'string'
      ? { self: line.self, peer: line.peer, received: line.received }
      : undefined;
  const fail = (line: LogLine) => (line.event === 'error' ? String(line.message) : undefined);
  const server = children.start(
    'workload-server',
    ids.server.node,
    [WORKLOAD_JS, '--role', 'server', '--id', ids.server.id.toString(), '--peer', ids.client.id.toString()],
    { env, ...ids.server.credentials },
  );
  out(`    ${server.name} pid ${server.process.pid}: ${ids.server.id} (${ids.server.selectors.join(' ')})`);
  const serverDone = server.waitFor('mTLS exchange', exchanged, { timeoutMs: 2 * START_TIMEOUT_MS, fail });
  serverDone.catch(() => undefined);
  const port = await server.waitFor(
    'listening port',
    (line) => (line.event === 'listening' && typeof line.port === 'number' ? line.port : undefined),
    { timeoutMs: START_TIMEOUT_MS, fail },
  );
  const client = children.start(
    'workload-client',
    ids.client.node,
    [
      WORKLOAD_JS,
      '--role',
      'client',
      '--id',
      ids.client.id.toString(),
      '--peer',
      ids.server.id.toString(),
      '--port',
      String(port),
    ],
    { env, ...ids.client.credentials },
  );
  out(`    ${client.name} pid ${client.process.pid}: ${ids.client.id} (${ids.client.selectors.join(' ')})`);
  const clientResult = await client.waitFor('mTLS exchange', exchanged, {
    timeoutMs: START_TIMEOUT_MS,
    fail,
  });
  const serverResult = await serverDone;
  await Promise.all([server.exited(), client.exited()]);
  return { server: serverResult, client: clientResult };
}

function report(error: unknown): void {
  const text = error instanceof Error ? error.message : String(error);
  process.stderr.write(`\ndemo: ${text}\n`);
  const source = error instanceof StepError || error instanceof DemoError ? error.source : undefined;
  if (source !== undefined && source.tail() !== '') {
    process.stderr.write(
      `demo: last lines of ${source.name}'s log:\n${source.tail().replace(/^/gm, '  ')}\n`,
    );
  }
}

/** Runs the demo; resolves with the exit status once everything it started is gone. */
export async function main(argv: readonly string[]): Promise<number> {
  let options: Options | 'help';
  try {
    options = parseOptions(argv);
  } catch (error) {
    process.stderr.write(`demo: ${(error as Error).message}\n\n${USAGE}`);
    return 2;
  }
  if (options === 'help') {
    out(USAGE);
    return 0;
  }
  const demo = new Demo(options);
  const onSignal = (signal: NodeJS.Signals) => demo.interrupt(signal);
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  let status = 0;
  try {
    await run(demo);
  } catch (error) {
    if (error instanceof InterruptError) {
      // With --keep, Ctrl-C is the normal way out.
      status = options.keep && error.signal === 'SIGINT' ? 0 : error.signal === 'SIGINT' ? 130 : 143;
      out(`\n${error.message}: stopping`);
    } else {
      report(error);
      status = 1;
    }
  } finally {
    try {
      await demo.cleanup();
      out(`cleaned up: every process stopped${demo.dir === '' ? '' : `, ${demo.dir} removed`}`);
    } catch (error) {
      process.stderr.write(`demo: cleanup failed: ${(error as Error).message}\n`);
      status = 1;
    }
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
  return status;
}
