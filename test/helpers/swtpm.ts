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
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { accepts, freePortPair, manufactureConfig, swtpmSocketArgs } from '../../src/demo/swtpm.js';

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

async function waitForPort(port: number, child: ChildProcess, log: () => string): Promise<void> {
  for (let attempt = 0; attempt < 100; attempt++) {
    if (child.exitCode !== null) throw new Error(`swtpm exited with ${child.exitCode}: ${log()}`);
    if (await accepts(port)) return;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  throw new Error(`swtpm did not listen on port ${port}: ${log()}`);
}

/** A TPM state made by `swtpm_setup --create-ek-cert`, and the local CA that signed its EK certificates. */
export interface ManufacturedTpm {
  readonly stateDir: string;
  /** PEM of the CA that signed the EK certificates (`CN=swtpm-localca`). */
  readonly ekIssuerCertPath: string;
  /** PEM of the root that signed the issuer (`CN=swtpm-localca-rootca`). */
  readonly ekRootCertPath: string;
}

/**
 * Manufactures a TPM state in `stateDir` (created) with EK certificates from the local CA in
 * `factoryDir`. The CA is made on first use and shared by every TPM made in the same factory, so one
 * EK CA directory on the server admits all of them.
 */
export async function manufactureTpm(
  factoryDir: string,
  stateDir: string,
  pcrBanks?: string,
): Promise<ManufacturedTpm> {
  await mkdir(stateDir, { recursive: true, mode: 0o700 });
  const { caDir, setupArgs } = await manufactureConfig(factoryDir, stateDir, pcrBanks);
  await run('swtpm_setup', setupArgs);
  return {
    stateDir,
    ekIssuerCertPath: join(caDir, 'issuercert.pem'),
    ekRootCertPath: join(caDir, 'swtpm-localca-rootca-cert.pem'),
  };
}

export async function startSwtpm(options: SwtpmOptions = {}): Promise<Swtpm> {
  const dir = await mkdtemp(join(tmpdir(), 'ironroot-swtpm-'));
  const stateDir = join(dir, 'state');
  let made: ManufacturedTpm;
  try {
    made = await manufactureTpm(dir, stateDir, options.pcrBanks);
  } catch (error) {
    await rm(dir, { recursive: true, force: true });
    throw error;
  }

  const port = await freePortPair();
  const ctrlPort = port + 1;
  let output = '';
  const child = spawn('swtpm', swtpmSocketArgs(port, stateDir), { stdio: ['ignore', 'pipe', 'pipe'] });
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
    ekIssuerCertPath: made.ekIssuerCertPath,
    ekRootCertPath: made.ekRootCertPath,
    stop,
  };
}
