/**
 * The demo's TPM: a swtpm whose state is made by `swtpm_setup --create-ek-cert` (RSA-2048 and
 * P-384 EKs with certificates from swtpm-localca), with the local CA's files, the TPM state and
 * every configuration file in the demo directory; nothing under /etc or /var is written.
 *
 * @module
 */
import { copyFile, mkdir, writeFile } from 'node:fs/promises';
import { connect, createServer } from 'node:net';
import { join } from 'node:path';
import { DemoError } from './errors.js';
import type { Child, Children } from './processes.js';

export interface DemoTpm {
  /** tpm2-tss TCTI string: `swtpm:host=127.0.0.1,port=N`. */
  readonly tcti: string;
  /** Directory with the swtpm-localca root and issuer certificates: the server's trusted EK CAs. */
  readonly ekCaDir: string;
  readonly child: Child;
}

/** Reserve-and-release of a loopback port; undefined when it is taken. */
function listen(port: number): Promise<number | undefined> {
  return new Promise((resolve) => {
    const server = createServer();
    server.once('error', () => resolve(undefined));
    server.listen(port, '127.0.0.1', () => {
      const address = server.address();
      server.close(() => resolve(typeof address === 'object' && address !== null ? address.port : undefined));
    });
  });
}

/** Two consecutive free loopback ports: swtpm's server port and its control port. */
export async function freePortPair(): Promise<number> {
  for (let attempt = 0; attempt < 20; attempt++) {
    const port = await listen(0);
    if (port !== undefined && port < 65535 && (await listen(port + 1)) !== undefined) return port;
  }
  throw new DemoError('could not find two consecutive free TCP ports on 127.0.0.1');
}

/** Whether something accepts TCP connections on 127.0.0.1:`port`. */
export function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect(port, '127.0.0.1');
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

/**
 * Writes the swtpm-localca and swtpm_setup configuration under `dir` (the local CA lives in
 * `dir/localca`) and returns swtpm_setup's arguments for manufacturing `stateDir` with RSA-2048
 * and P-384 EKs and their certificates. Tests manufacture their TPMs the same way.
 */
export async function manufactureConfig(
  dir: string,
  stateDir: string,
  pcrBanks = 'sha256',
): Promise<{ caDir: string; setupArgs: string[] }> {
  const caDir = join(dir, 'localca');
  await mkdir(caDir, { recursive: true, mode: 0o700 });
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
      `active_pcr_banks = ${pcrBanks}`,
      '',
    ].join('\n'),
  );
  const setupArgs = ['--tpm2', '--tpmstate', stateDir, '--config', setupConf, '--create-ek-cert'];
  setupArgs.push('--create-platform-cert', '--lock-nvram', '--pcr-banks', pcrBanks);
  return { caDir, setupArgs };
}

/** `swtpm socket` arguments: TPM 2.0 on 127.0.0.1:`port`, control channel on `port + 1`. */
export function swtpmSocketArgs(port: number, stateDir: string): string[] {
  return [
    'socket',
    '--tpm2',
    '--server',
    `type=tcp,port=${port},bindaddr=127.0.0.1`,
    '--ctrl',
    `type=tcp,port=${port + 1},bindaddr=127.0.0.1`,
    '--tpmstate',
    `dir=${stateDir}`,
    '--flags',
    'not-need-init,startup-clear',
  ];
}

/** Manufactures the TPM (EKs and their certificates) and starts swtpm on loopback ports. */
export async function startTpm(dir: string, children: Children): Promise<DemoTpm> {
  const stateDir = join(dir, 'state');
  const ekCaDir = join(dir, 'ek-ca');
  await Promise.all([stateDir, ekCaDir].map((d) => mkdir(d, { recursive: true, mode: 0o700 })));
  const { caDir, setupArgs } = await manufactureConfig(dir, stateDir);
  await children.run('swtpm_setup (manufacturing the TPM with EK certificates)', 'swtpm_setup', setupArgs);
  // The server trusts the local CA's root and its issuing CA, as an operator would lay them out.
  await copyFile(join(caDir, 'swtpm-localca-rootca-cert.pem'), join(ekCaDir, 'root.pem'));
  await copyFile(join(caDir, 'issuercert.pem'), join(ekCaDir, 'issuer.pem'));

  const port = await freePortPair();
  const child = children.start('swtpm', 'swtpm', swtpmSocketArgs(port, stateDir));
  for (let attempt = 0; attempt < 200; attempt++) {
    if (!child.running) throw new DemoError('swtpm exited at start', child);
    if (await accepts(port)) return { tcti: `swtpm:host=127.0.0.1,port=${port}`, ekCaDir, child };
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  throw new DemoError(`swtpm did not listen on 127.0.0.1:${port}`, child);
}
