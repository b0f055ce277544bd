import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { stringify } from 'yaml';

export const ROOT = fileURLToPath(new URL('../..', import.meta.url));
export const SERVER_BIN = join(ROOT, 'bin', 'ironroot-server.js');

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() =>
        typeof address === 'object' && address ? resolve(address.port) : reject(new Error('no port')),
      );
    });
  });
}

export interface TestServer {
  dir: string;
  socket: string;
  dataDir: string;
  configFile: string;
  healthPort: number;
  log(): string;
  stop(): Promise<void>;
  kill9(): Promise<void>;
  restart(): Promise<void>;
}

/** A server on its own directory, socket and port, run from the built CLI with a config file. */
export async function startTestServer(extra: Record<string, unknown> = {}): Promise<TestServer> {
  const dir = mkdtempSync(join(tmpdir(), 'ironroot-server-'));
  const healthPort = await freePort();
  const config = {
    trust_domain: 'example.org',
    data_dir: join(dir, 'data'),
    admin_socket: join(dir, 'run', 'admin.sock'),
    key_manager: 'memory:',
    development: true,
    health_address: `127.0.0.1:${healthPort}`,
    bind_address: '127.0.0.1:0',
    ...extra,
  };
  const configFile = join(dir, 'server.yaml');
  writeFileSync(configFile, stringify(config));
  let output = '';
  let child: ChildProcess | undefined;
  const current = (): ChildProcess => {
    if (child === undefined) throw new Error('test server not started');
    return child;
  };
  const exit = (signal: NodeJS.Signals) => async () => {
    const running = current();
    if (running.exitCode !== null || running.signalCode !== null) return;
    const exited = new Promise((resolve) => running.once('exit', resolve));
    running.kill(signal);
    await exited;
  };
  const launch = async () => {
    const started = spawn(process.execPath, [SERVER_BIN, 'run', '--config', configFile], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    child = started;
    const mark = output.length;
    started.stdout.on('data', (chunk: Buffer) => {
      output += chunk.toString();
    });
    started.stderr.on('data', (chunk: Buffer) => {
      output += chunk.toString();
    });
    await new Promise<void>((resolve, reject) => {
      const check = setInterval(() => {
        if (output.indexOf('ironroot-server started', mark) !== -1 && existsSync(config.admin_socket)) {
          clearInterval(check);
          resolve();
        } else if (started.exitCode !== null) {
          clearInterval(check);
          reject(new Error(`server exited with ${started.exitCode}:\n${output}`));
        }
      }, 25);
    });
  };
  await launch();
  return {
    dir,
    socket: config.admin_socket,
    dataDir: config.data_dir,
    configFile,
    healthPort,
    log: () => output,
    stop: exit('SIGTERM'),
    kill9: exit('SIGKILL'),
    restart: launch,
  };
}

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs the built CLI; never throws on a non-zero exit, so tests assert on the code. */
export function cli(
  args: readonly string[],
  options: { uid?: number; gid?: number; input?: string } = {},
): Promise<CliResult> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [SERVER_BIN, ...args], {
      stdio: ['pipe', 'pipe', 'pipe'],
      ...(options.uid !== undefined ? { uid: options.uid } : {}),
      ...(options.gid !== undefined ? { gid: options.gid } : {}),
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => {
      stdout += c.toString();
    });
    child.stderr.on('data', (c: Buffer) => {
      stderr += c.toString();
    });
    child.stdin.end(options.input ?? '');
    child.on('close', (code) => resolve({ code: code ?? -1, stdout, stderr }));
  });
}
