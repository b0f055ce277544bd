import { execFile } from 'node:child_process';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { type ParsedPublic, parseTpm2bPublic } from '../../../src/tpm/codec/public.js';
import { type Swtpm, startSwtpm } from '../../helpers/swtpm.js';

const exec = promisify(execFile);

/** A swtpm from the shared helper, with a tpm2-tools runner that works in its directory. */
export interface TestTpm {
  readonly swtpm: Swtpm;
  readonly dir: string;
  /** Runs a tpm2-tools command against this TPM, with `dir` as working directory; resolves to stdout. */
  tool(name: string, args: readonly string[]): Promise<string>;
  stop(): Promise<void>;
}

/**
 * Starts a swtpm manufactured with EKs and EK certificates (RSA-2048 at 0x81010001, ECC P-384 at
 * 0x81010016). Tools run with `cwd = dir`, so tests name their files relative to it.
 */
export async function startTestTpm(): Promise<TestTpm> {
  const swtpm = await startSwtpm();
  const tool = async (name: string, args: readonly string[]): Promise<string> => {
    try {
      const { stdout } = await exec(name, [...args], {
        cwd: swtpm.dir,
        env: { ...process.env, TPM2TOOLS_TCTI: swtpm.tcti },
        maxBuffer: 16 * 1024 * 1024,
      });
      return stdout;
    } catch (error) {
      const stderr = (error as { stderr?: string }).stderr ?? '';
      throw new Error(`${name} ${args.join(' ')} failed: ${stderr.trim() || String(error)}`);
    }
  };
  return { swtpm, dir: swtpm.dir, tool, stop: () => swtpm.stop() };
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

export const EK_HANDLE = { rsa: '0x81010001', ecc: '0x81010016' } as const;

/**
 * Starts a policy session that satisfies the EK's policy: PolicySecret(endorsement) for the
 * low-range RSA EK, plus PolicyOR(A, C) in SHA-384 for the high-range P-384 EK. Returns the session
 * file name, for `-P session:<file>`; flush it with `tpm2_flushcontext <file>`.
 */
export async function ekPolicySession(tpm: TestTpm, ek: EkKind): Promise<string> {
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

export type EkKind = 'rsa' | 'ecc';

/** The EK's TPM2B_PUBLIC as the TPM reports it (tpm2_readpublic -f tss), decoded by the codec. */
export async function readEkPublic(tpm: TestTpm, kind: EkKind): Promise<ParsedPublic> {
  await tpm.tool('tpm2_readpublic', ['-c', EK_HANDLE[kind], '-f', 'tss', '-o', `ek-${kind}.tss`]);
  return parseTpm2bPublic(await readOut(tpm, `ek-${kind}.tss`));
}

/**
 * Creates an AK under the EK with tpm2_createak (files `<name>.pub` as TPM2B_PUBLIC, `.priv`,
 * `.name`) and flushes it; returns the AK's Name as the TPM computed it.
 */
export async function createAk(
  tpm: TestTpm,
  ek: EkKind,
  name: string,
  key: 'rsa' | 'ecc',
  scheme: 'rsassa' | 'rsapss' | 'ecdsa',
): Promise<Buffer> {
  await tpm.tool('tpm2_createak', [
    '-C',
    EK_HANDLE[ek],
    '-c',
    `${name}.ctx`,
    '-G',
    key,
    '-g',
    'sha256',
    '-s',
    scheme,
    '-u',
    `${name}.pub`,
    '-r',
    `${name}.priv`,
    '-n',
    `${name}.name`,
  ]);
  await tpm.tool('tpm2_flushcontext', ['-t']);
  return readOut(tpm, `${name}.name`);
}

/** Loads an AK made by `createAk` into `<name>.ctx` (the low-range EK's policy is needed for it). */
export async function loadAk(tpm: TestTpm, ek: EkKind, name: string): Promise<void> {
  const args = ['-C', EK_HANDLE[ek], '-u', `${name}.pub`, '-r', `${name}.priv`, '-c', `${name}.ctx`];
  if (ek === 'ecc') {
    // The high-range EK has userWithAuth, so its (empty) password authorises loading a child.
    await tpm.tool('tpm2_load', args);
    return;
  }
  const session = await ekPolicySession(tpm, ek);
  try {
    await tpm.tool('tpm2_load', [...args, '-P', `session:${session}`]);
  } finally {
    await tpm.tool('tpm2_flushcontext', [session]);
  }
}
