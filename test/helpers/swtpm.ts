/**
 * A real swtpm for one test file: a fresh state made by `swtpm_setup --create-ek-cert` (RSA-2048 EK
 * at 0x81010001, ECC P-384 EK at 0x81010016, certificates from a local CA created in the temp dir),
 * served over TCP on free loopback ports. Nothing is written outside the temp dir.
 *
 * @example
 *   const tpm = await startSwtpm();
 *   afterAll(() => tpm.stop());
 *   // tpm.tcti === 'swtpm:host=127.0.0.1,port=…'
 */
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { connect, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

export interface Swtpm {
  /** TCTI config string for tpm2-tss and tpm2-tools: `swtpm:host=127.0.0.1,port=N`. */
  readonly tcti: string;
  readonly port: number;
  readonly ctrlPort: number;
  /** Temp directory holding the TPM state, the local CA and anything else of this instance. */
  readonly dir: string;
  /** PEM of the CA that signed the EK certificates (`CN=swtpm-localca`). */
  readonly ekIssuerCertPath: string;
  /** PEM of the root that signed the issuer (`CN=swtpm-localca-rootca`). */
  readonly ekRootCertPath: string;
  /** Stops swtpm and deletes `dir`. Safe to call twice. */
  stop(): Promise<void>;
}

export interface SwtpmOptions {
  /** PCR banks to activate (swtpm_setup's `--pcr-banks`); default `sha256`, as on Debian. */
  readonly pcrBanks?: string;
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() => {
        if (address && typeof address === 'object') resolve(address.port);
        else reject(new Error('no port assigned'));
      });
    });
  });
}

async function portIsFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const server = createServer();
    server.once('error', () => resolve(false));
    server.listen(port, '127.0.0.1', () => server.close(() => resolve(true)));
  });
}

/** Two consecutive free ports (swtpm's server port and its control port). */
async function freePortPair(): Promise<number> {
  for (let attempt = 0; attempt < 20; attempt++) {
    const port = await freePort();
    if (port < 65535 && (await portIsFree(port + 1))) return port;
  }
  throw new Error('could not find two consecutive free TCP ports');
}

async function waitForPort(port: number, child: ChildProcess, log: () => string): Promise<void> {
  for (let attempt = 0; attempt < 100; attempt++) {
    if (child.exitCode !== null) throw new Error(`swtpm exited with ${child.exitCode}: ${log()}`);
    const ok = await new Promise<boolean>((resolve) => {
      const socket = connect(port, '127.0.0.1');
      socket.once('connect', () => {
        socket.destroy();
        resolve(true);
      });
      socket.once('error', () => resolve(false));
    });
    if (ok) return;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  throw new Error(`swtpm did not listen on port ${port}: ${log()}`);
}

export async function startSwtpm(options: SwtpmOptions = {}): Promise<Swtpm> {
  const dir = await mkdtemp(join(tmpdir(), 'ironroot-swtpm-'));
  const stateDir = join(dir, 'state');
  const caDir = join(dir, 'localca');
  await run('mkdir', ['-p', stateDir, caDir]);
  const caConf = join(caDir, 'swtpm-localca.conf');
  await writeFile(
    caConf,
    [
      `statedir = ${caDir}`,
      `signingkey = ${join(caDir, 'signkey.pem')}`,
      `issuercert = ${join(caDir, 'issuercert.pem')}`,
      `certserial = ${join(caDir, 'certserial')}`,
      '',
    ].join('\n'),
  );
  const setupConf = join(dir, 'swtpm_setup.conf');
  await writeFile(
    setupConf,
    [
      'create_certs_tool = /usr/bin/swtpm_localca',
      `create_certs_tool_config = ${caConf}`,
      'create_certs_tool_options = /etc/swtpm-localca.options',
      `active_pcr_banks = ${options.pcrBanks ?? 'sha256'}`,
      '',
    ].join('\n'),
  );
  try {
    await run('swtpm_setup', [
      '--tpm2',
      '--tpmstate',
      stateDir,
      '--config',
      setupConf,
      '--create-ek-cert',
      '--create-platform-cert',
      '--lock-nvram',
      '--pcr-banks',
      options.pcrBanks ?? 'sha256',
    ]);
  } catch (error) {
    await rm(dir, { recursive: true, force: true });
    throw error;
  }

  const port = await freePortPair();
  const ctrlPort = port + 1;
  let output = '';
  const child = spawn(
    'swtpm',
    [
      'socket',
      '--tpm2',
      '--server',
      `type=tcp,port=${port},bindaddr=127.0.0.1`,
      '--ctrl',
      `type=tcp,port=${ctrlPort},bindaddr=127.0.0.1`,
      '--tpmstate',
      `dir=${stateDir}`,
      '--flags',
      'not-need-init,startup-clear',
    ],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  child.stdout?.on('data', (d: Buffer) => {
    output += d.toString();
  });
  child.stderr?.on('data', (d: Buffer) => {
    output += d.toString();
  });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  let stopped = false;
  const stop = async (): Promise<void> => {
    if (stopped) return;
    stopped = true;
    if (child.exitCode === null) {
      // swtpm_ioctl -s makes swtpm save its state and exit cleanly; SIGTERM is the fallback.
      await run('swtpm_ioctl', ['--tcp', `127.0.0.1:${ctrlPort}`, '-s']).catch(() => child.kill('SIGTERM'));
      await exited;
    }
    await rm(dir, { recursive: true, force: true });
  };
  try {
    await waitForPort(port, child, () => output);
  } catch (error) {
    await stop();
    throw error;
  }
  return {
    tcti: `swtpm:host=127.0.0.1,port=${port}`,
    port,
    ctrlPort,
    dir,
    ekIssuerCertPath: join(caDir, 'issuercert.pem'),
    ekRootCertPath: join(caDir, 'swtpm-localca-rootca-cert.pem'),
    stop,
  };
}
