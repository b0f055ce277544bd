import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';

const exec = promisify(execFile);

/** A running swtpm with EKs and EK certificates from its own local CA, in its own directory. */
export interface TestTpm {
  readonly dir: string;
  readonly tcti: string;
  /** The local CA's root and intermediate (the EK certificates' issuer), PEM files. */
  readonly rootCaPem: string;
  readonly issuerCaPem: string;
  /** Runs a tpm2-tools command against this TPM, in `dir`; resolves to stdout. */
  tool(name: string, args: readonly string[]): Promise<string>;
  stop(): Promise<void>;
}

function tryListen(port: number): Promise<number | undefined> {
  return new Promise((resolve) => {
    const server = createServer();
    server.once('error', () => resolve(undefined));
    server.listen(port, '127.0.0.1', () => {
      const address = server.address();
      const bound = typeof address === 'object' && address !== null ? address.port : undefined;
      server.close(() => resolve(bound));
    });
  });
}

/** A port P such that P and P + 1 are free: the swtpm TCTI always uses P + 1 as the control port. */
async function freePortPair(): Promise<number> {
  for (let i = 0; i < 20; i++) {
    const port = await tryListen(0);
    if (port !== undefined && port < 65535 && (await tryListen(port + 1)) !== undefined) return port;
  }
  throw new Error('no two consecutive free loopback ports found');
}

async function waitForExit(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  await new Promise<void>((resolve) => child.once('exit', () => resolve()));
}

/**
 * Manufactures a TPM with `swtpm_setup --create-ek-cert` (RSA-2048 EK at 0x81010001, ECC P-384 EK
 * at 0x81010016, certificates from a local CA made in the same directory) and starts swtpm on two
 * free loopback ports.
 */
export async function startTestTpm(): Promise<TestTpm> {
  const dir = await mkdtemp(join(tmpdir(), 'ironroot-tpmverify-'));
  const ca = join(dir, 'ca');
  const state = join(dir, 'state');
  await exec('mkdir', ['-p', ca, state]);
  await writeFile(
    join(dir, 'localca.conf'),
    `statedir = ${ca}\nsigningkey = ${ca}/signkey.pem\nissuercert = ${ca}/issuercert.pem\ncertserial = ${ca}/certserial\n`,
  );
  await writeFile(join(dir, 'localca.options'), '--platform-manufacturer Test\n--platform-model Test\n');
  await writeFile(
    join(dir, 'setup.conf'),
    `create_certs_tool = /usr/bin/swtpm_localca\ncreate_certs_tool_config = ${dir}/localca.conf\n` +
      `create_certs_tool_options = ${dir}/localca.options\nactive_pcr_banks = sha256\n`,
  );
  await exec('swtpm_setup', [
    '--tpm2',
    '--tpmstate',
    state,
    '--create-ek-cert',
    '--lock-nvram',
    '--config',
    join(dir, 'setup.conf'),
  ]);

  // A port taken between freePort() and swtpm's bind makes swtpm exit; try again with new ports.
  for (let attempt = 0; attempt < 5; attempt++) {
    const port = await freePortPair();
    const ctrl = port + 1;
    const child = spawn(
      'swtpm',
      [
        'socket',
        '--tpm2',
        '--tpmstate',
        `dir=${state}`,
        '--server',
        `type=tcp,port=${port},bindaddr=127.0.0.1`,
        '--ctrl',
        `type=tcp,port=${ctrl},bindaddr=127.0.0.1`,
        '--flags',
        'not-need-init,startup-clear',
      ],
      { stdio: 'ignore' },
    );
    const tcti = `swtpm:host=127.0.0.1,port=${port}`;
    const tool = async (name: string, args: readonly string[]): Promise<string> => {
      const { stdout } = await exec(name, [...args], {
        cwd: dir,
        env: { ...process.env, TPM2TOOLS_TCTI: tcti },
        maxBuffer: 16 * 1024 * 1024,
      });
      return stdout;
    };
    let ready = false;
    for (let i = 0; i < 50 && child.exitCode === null; i++) {
      try {
        await tool('tpm2_getrandom', ['--hex', '4']);
        ready = true;
        break;
      } catch {
        await new Promise((r) => setTimeout(r, 100));
      }
    }
    if (!ready) {
      child.kill('SIGKILL');
      await waitForExit(child);
      continue;
    }
    return {
      dir,
      tcti,
      rootCaPem: join(ca, 'swtpm-localca-rootca-cert.pem'),
      issuerCaPem: join(ca, 'issuercert.pem'),
      tool,
      async stop() {
        // TPM2_Shutdown first, so the state stays clean; then end the process we started.
        await tool('tpm2_shutdown', []).catch(() => undefined);
        child.kill('SIGTERM');
        await waitForExit(child);
        await rm(dir, { recursive: true, force: true });
      },
    };
  }
  await rm(dir, { recursive: true, force: true });
  throw new Error('swtpm did not start on a free port after 5 attempts');
}

/** Reads a file written by a tool in the TPM's directory. */
export function readOut(tpm: TestTpm, name: string): Promise<Buffer> {
  return readFile(join(tpm.dir, name));
}

/** Writes an input file for a tool into the TPM's directory. */
export function writeIn(tpm: TestTpm, name: string, data: Uint8Array | string): Promise<void> {
  return writeFile(join(tpm.dir, name), data);
}

/** SHA-384 policy digests of the high-range EK templates' PolicyOR branches (tpm-notes §2.2). */
export const POLICY_A_SHA384 =
  '8bbf2266537c171cb56e403c4dc1d4b64f432611dc386e6f532050c3278c930e143e8bb1133824ccb431053871c6db53';
export const POLICY_C_SHA384 =
  'd6032ce61f2fb3c240eb3cf6a33237ef2b6a16f4293c22b455e261cffd217ad5b4947c2d73e63005eed2dc2b3593d165';

export const RSA_EK_HANDLE = '0x81010001';
export const ECC_EK_HANDLE = '0x81010016';

/**
 * Starts a policy session that satisfies the EK's policy: PolicySecret(endorsement) for the
 * low-range RSA EK, plus PolicyOR(A, C) in SHA-384 for the high-range P-384 EK. Returns the session
 * file name, for `-P session:<file>`; flush it with `tpm2_flushcontext <file>`.
 */
export async function ekPolicySession(tpm: TestTpm, ek: 'rsa' | 'ecc'): Promise<string> {
  const session = `session-${ek}.ctx`;
  await tpm.tool('tpm2_startauthsession', [
    '--policy-session',
    '-S',
    session,
    '-g',
    ek === 'rsa' ? 'sha256' : 'sha384',
  ]);
  await tpm.tool('tpm2_policysecret', ['-S', session, '-c', 'e']);
  if (ek === 'ecc') {
    await writeIn(tpm, 'policyA.bin', Buffer.from(POLICY_A_SHA384, 'hex'));
    await writeIn(tpm, 'policyC.bin', Buffer.from(POLICY_C_SHA384, 'hex'));
    await tpm.tool('tpm2_policyor', ['-S', session, '-l', 'sha384:policyA.bin,policyC.bin']);
  }
  return session;
}

/** The tpm2-tools credential file: magic 0xBADCC0DE, version 1, TPM2B_ID_OBJECT, TPM2B_ENCRYPTED_SECRET. */
export function toolsCredentialFile(idObject: Uint8Array, encryptedSecret: Uint8Array): Buffer {
  return Buffer.concat([Buffer.from('badcc0de00000001', 'hex'), idObject, encryptedSecret]);
}
