import { copyFileSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { Agent } from '../../src/agent/agent.js';
import { AgentApiClient, type Identity } from '../../src/agent/client.js';
import { loadAgentConfig } from '../../src/agent/config/load.js';
import type { AgentConfigInput } from '../../src/agent/config/schema.js';
import type { HealthStatus } from '../../src/agent/health.js';
import { createAgentLogger } from '../../src/agent/log.js';
import { validateConfig } from '../../src/server/config/load.js';
import type { ServerConfigInput } from '../../src/server/config/schema.js';
import { createServerLogger } from '../../src/server/log.js';
import { RegistrationService } from '../../src/server/registration/service.js';
import { type RunningServer, startServer } from '../../src/server/server.js';
import { createSoftHsm, type SoftHsm } from '../helpers/softhsm.js';
import type { Swtpm } from '../helpers/swtpm.js';

export const TD = 'example.org';

/** One SoftHSM token per test file (process): servers in a file run one after another and share it. */
let hsm: SoftHsm | undefined;

/** Deletes this file's SoftHSM token; call after its last server stopped. */
export async function removeHsm(): Promise<void> {
  await hsm?.cleanup();
  hsm = undefined;
}

/** A clock the test moves; starts at the real time so certificates are valid for openssl too. */
export class FakeClock {
  #offsetMs = 0;
  now(): number {
    return Date.now() + this.#offsetMs;
  }
  advance(seconds: number): void {
    this.#offsetMs += seconds * 1000;
  }
}

/** Collects the JSON log lines, so tests can assert on logged decisions. */
export class LogSink {
  readonly lines: Record<string, unknown>[] = [];
  readonly stream = new Writable({
    write: (chunk: Buffer, _encoding, done) => {
      for (const line of chunk.toString().split('\n'))
        if (line.trim() !== '') this.lines.push(JSON.parse(line));
      done();
    },
  });
  text(): string {
    return this.lines.map((l) => JSON.stringify(l)).join('\n');
  }
  decisions(): Record<string, unknown>[] {
    return this.lines.filter((l) => typeof l.result === 'string' && typeof l.operation === 'string');
  }
}

/** A directory with the swtpm local CA's root and intermediate, as an operator would lay it out. */
export function ekCaDir(swtpm: Pick<Swtpm, 'ekRootCertPath' | 'ekIssuerCertPath'>): string {
  const dir = mkdtempSync(join(tmpdir(), 'ironroot-ekca-'));
  copyFileSync(swtpm.ekRootCertPath, join(dir, 'root.pem'));
  copyFileSync(swtpm.ekIssuerCertPath, join(dir, 'issuer.pem'));
  return dir;
}

export interface TestServer {
  server: RunningServer;
  logs: LogSink;
  clock: FakeClock;
  address: string;
  dataDir: string;
  /** For the built CLI's --admin-socket. */
  adminSocket: string;
  bundleFile: string;
  registration: RegistrationService;
  down(): Promise<void>;
  up(changes?: Partial<ServerConfigInput>): Promise<void>;
  restart(changes?: Partial<ServerConfigInput>): Promise<void>;
  stop(): Promise<void>;
}

/** The agent SVID and key an agent keeps in its data directory. */
export function agentIdentity(dataDir: string): Identity {
  return {
    keyPem: readFileSync(join(dataDir, 'agent-key.pem'), 'utf8'),
    chainPem: readFileSync(join(dataDir, 'agent-svid.pem'), 'utf8'),
  };
}

/** A client of the server's agent API presenting `identity`; without one, as an agent before it attests. */
export function agentApiClient(server: TestServer, identity?: Identity, deadlineMs = 10_000): AgentApiClient {
  return new AgentApiClient({
    address: server.address,
    trustDomain: TD,
    bundlePem: readFileSync(server.bundleFile, 'utf8'),
    deadlineMs,
    ...(identity ? { identity } : {}),
  });
}

/** A real server in this process: SQLite in a temporary directory, the CA, the agent API on TLS. */
export async function startAttestServer(extra: Partial<ServerConfigInput> = {}): Promise<TestServer> {
  const dir = mkdtempSync(join(tmpdir(), 'ironroot-attest-'));
  hsm ??= await createSoftHsm('ironroot-attest');
  const adminSocket = join(dir, 'run', 'admin.sock');
  const input: ServerConfigInput = {
    trust_domain: TD,
    data_dir: join(dir, 'data'),
    admin_socket: adminSocket,
    // CA keys in SoftHSM, so a restarted server finds them again, as in production.
    key_manager: hsm.uri(),
    health_address: '127.0.0.1:0',
    bind_address: '127.0.0.1:0',
    ...extra,
  };
  const config = validateConfig(input, 'test');
  const logs = new LogSink();
  // The executables' own logger at debug, so tests see the lines operators see.
  const logger = createServerLogger({ log_level: 'debug', log_format: config.log_format }, logs.stream);
  const clock = new FakeClock();
  const first = await startServer(config, logger, { clock });
  const handle: TestServer = {
    server: first,
    logs,
    clock,
    address: `127.0.0.1:${first.ports.agentApi}`,
    dataDir: config.data_dir,
    adminSocket,
    bundleFile: join(dir, 'bundle.pem'),
    registration: new RegistrationService(first.datastore, TD, clock),
    async down() {
      await handle.server.stop();
    },
    async up(changes: Partial<ServerConfigInput> = {}) {
      // The same port, so agents find it again; `changes` model an operator editing the config.
      const port = Number(handle.address.split(':')[1]);
      const next = validateConfig({ ...input, ...changes, bind_address: `127.0.0.1:${port}` }, 'test');
      handle.server = await startServer(next, logger, { clock });
      handle.registration = new RegistrationService(handle.server.datastore, TD, clock);
    },
    async restart(changes: Partial<ServerConfigInput> = {}) {
      await handle.down();
      await handle.up(changes);
    },
    stop: () => handle.server.stop(),
  };
  writeFileSync(
    handle.bundleFile,
    handle.server.ca
      .bundle()
      .toX509Bundle()
      .authorities.map((c) => c.toString())
      .join(''),
  );
  return handle;
}

export interface TestAgent {
  agent: Agent;
  logs: LogSink;
  dataDir: string;
  config: AgentConfigInput;
  restart(): Promise<void>;
  /** Starts a fresh agent process on the same config and data directory, after stop(). */
  start(): Promise<void>;
  stop(): Promise<void>;
}

/** `options` go to the Agent as they are (e.g. a resolver for server host names). */
export async function startTestAgent(
  server: TestServer,
  overrides: Partial<AgentConfigInput>,
  options: ConstructorParameters<typeof Agent>[2] = {},
): Promise<TestAgent> {
  const dataDir = join(mkdtempSync(join(tmpdir(), 'ironroot-agent-')), 'data');
  const input: AgentConfigInput = {
    server_address: server.address,
    trust_domain: TD,
    trust_bundle: server.bundleFile,
    data_dir: dataDir,
    socket_path: join(dataDir, '..', 'agent.sock'),
    event_log_path: 'none',
    retry_initial: '50ms',
    retry_max: '200ms',
    ...overrides,
  };
  const logs = new LogSink();
  const make = () => {
    const config = loadAgentConfig({ overrides: input });
    return new Agent(
      config,
      createAgentLogger({ log_level: 'debug', log_format: config.log_format }, logs.stream),
      options,
    );
  };
  const handle: TestAgent = {
    agent: make(),
    logs,
    dataDir,
    config: input,
    async restart() {
      await handle.agent.stop();
      handle.agent = make();
      await handle.agent.start();
    },
    async start() {
      handle.agent = make();
      await handle.agent.start();
    },
    stop: () => handle.agent.stop(),
  };
  await handle.agent.start();
  return handle;
}

/** Polls until `check` passes; fails with the last status after `timeoutMs`. */
export async function until<T>(
  what: string,
  check: () => T | undefined | Promise<T | undefined>,
  timeoutMs = 30_000,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value !== undefined && value !== false) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

export function healthy(agent: TestAgent): HealthStatus | undefined {
  const status = agent.agent.status();
  return status.state === 'healthy' && status.spiffe_id !== '' ? status : undefined;
}
