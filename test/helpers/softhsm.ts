import { execFile } from 'node:child_process';
import { chmod, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

export const SOFTHSM_MODULE = '/usr/lib/softhsm/libsofthsm2.so';

export interface SoftHsm {
  /** Temporary directory holding the config, the token store and the PIN file. */
  readonly dir: string;
  readonly tokenDir: string;
  readonly label: string;
  readonly pin: string;
  readonly pinFile: string;
  /** Environment for child processes (pkcs11-tool, the CLI) that must see this token. */
  readonly env: NodeJS.ProcessEnv;
  /** A key-store URI for this token; `extra` is appended to the path part (e.g. `;max-sessions=8`). */
  uri(extra?: string): string;
  /** Runs pkcs11-tool against this token, logged in. */
  tool(...args: string[]): Promise<{ stdout: string; stderr: string }>;
  cleanup(): Promise<void>;
}

/**
 * A fresh SoftHSM2 token in its own temporary directory. SOFTHSM2_CONF is set in this process too,
 * because SoftHSM reads it at C_Initialize; vitest runs each test file in its own process, so files do
 * not see each other's tokens.
 */
export async function createSoftHsm(label = 'ironroot-test'): Promise<SoftHsm> {
  const dir = await mkdtemp(join(tmpdir(), 'ironroot-softhsm-'));
  const tokenDir = join(dir, 'tokens');
  await mkdir(tokenDir);
  const conf = join(dir, 'softhsm2.conf');
  await writeFile(
    conf,
    `directories.tokendir = ${tokenDir}\nobjectstore.backend = file\nlog.level = ERROR\n`,
  );
  const env = { ...process.env, SOFTHSM2_CONF: conf };
  process.env.SOFTHSM2_CONF = conf;
  const pin = '48151623';
  await run(
    'softhsm2-util',
    ['--init-token', '--free', '--label', label, '--pin', pin, '--so-pin', '87654321'],
    { env },
  );
  const pinFile = join(dir, 'user.pin');
  await writeFile(pinFile, `${pin}\n`, { mode: 0o600 });
  await chmod(pinFile, 0o600);
  return {
    dir,
    tokenDir,
    label,
    pin,
    pinFile,
    env,
    uri: (extra = '') =>
      `pkcs11:token=${label};module-path=${SOFTHSM_MODULE};pin-source=file:${pinFile}${extra}`,
    tool: (...args: string[]) =>
      run(
        'pkcs11-tool',
        ['--module', SOFTHSM_MODULE, '--token-label', label, '--login', '--pin', pin, ...args],
        {
          env,
        },
      ),
    cleanup: () => rm(dir, { recursive: true, force: true }),
  };
}
