/**
 * A SoftHSM2 token of the demo's own, in its directory: the configuration file, the token store and
 * the user PIN in a 0600 file. The token is initialised through PKCS#11 (C_InitToken, C_InitPIN) in
 * this process, so neither PIN ever appears on a command line; the SO PIN is not kept at all.
 *
 * @module
 */
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { DemoError } from './errors.js';

type Pkcs11Module = typeof import('pkcs11js');

export const SOFTHSM_MODULE = '/usr/lib/softhsm/libsofthsm2.so';
export const TOKEN_LABEL = 'ironroot-demo';

export interface DemoToken {
  /** `SOFTHSM2_CONF` for every process that must see the token. */
  readonly conf: string;
  readonly label: string;
  /** The key manager URI for the server; names the PIN file, never the PIN. */
  readonly uri: string;
}

function pin(): string {
  return randomBytes(12).toString('hex');
}

/** Creates and initialises the token; sets `SOFTHSM2_CONF` in this process (SoftHSM reads it at C_Initialize). */
export async function createToken(dir: string): Promise<DemoToken> {
  if (!existsSync(SOFTHSM_MODULE)) {
    throw new DemoError(`${SOFTHSM_MODULE} not found: install softhsm2 (npm run bootstrap does)`);
  }
  const tokenDir = join(dir, 'tokens');
  await mkdir(tokenDir, { recursive: true, mode: 0o700 });
  const conf = join(dir, 'softhsm2.conf');
  await writeFile(
    conf,
    `directories.tokendir = ${tokenDir}\nobjectstore.backend = file\nlog.level = ERROR\n`,
  );
  process.env.SOFTHSM2_CONF = conf;

  const userPin = pin();
  const pinFile = join(dir, 'user.pin');
  await writeFile(pinFile, `${userPin}\n`, { mode: 0o600 });

  const pkcs11js = createRequire(import.meta.url)('pkcs11js') as Pkcs11Module;
  const p11 = new pkcs11js.PKCS11();
  p11.load(SOFTHSM_MODULE);
  p11.C_Initialize({ flags: pkcs11js.CKF_OS_LOCKING_OK });
  try {
    const [free] = p11.C_GetSlotList(true);
    if (free === undefined) throw new DemoError('SoftHSM offers no free slot');
    // The SO PIN lives only in this function: the demo never needs it again.
    const soPin = pin();
    p11.C_InitToken(free, soPin, TOKEN_LABEL.padEnd(32, ' '));
    // SoftHSM moves an initialised token to a new slot: find it again by its label.
    const slot = p11.C_GetSlotList(true).find((s) => p11.C_GetTokenInfo(s).label.trim() === TOKEN_LABEL);
    if (slot === undefined) throw new DemoError(`the token ${TOKEN_LABEL} was not found after C_InitToken`);
    const session = p11.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION | pkcs11js.CKF_RW_SESSION);
    try {
      p11.C_Login(session, pkcs11js.CKU_SO, soPin);
      p11.C_InitPIN(session, userPin);
      p11.C_Logout(session);
    } finally {
      p11.C_CloseSession(session);
    }
  } catch (error) {
    if (error instanceof DemoError) throw error;
    throw new DemoError(`initialising the SoftHSM token: ${(error as Error).message}`, undefined, {
      cause: error,
    });
  } finally {
    p11.C_Finalize();
    p11.close();
  }
  return {
    conf,
    label: TOKEN_LABEL,
    uri: `pkcs11:token=${TOKEN_LABEL};module-path=${SOFTHSM_MODULE};pin-source=file:${pinFile}`,
  };
}
