/**
 * A tpm2-pkcs11 token over a real swtpm, as a second PKCS#11 module beside SoftHSM2. tpm2-abrmd
 * (in a private D-Bus session, so no systemd is needed) sits between them: without a resource
 * manager, tpm2_ptool runs the TPM out of object slots while it sets the token up.
 */
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { type Swtpm, startSwtpm } from './swtpm.js';

const run = promisify(execFile);

export const TPM2_PKCS11_MODULE = '/usr/lib/x86_64-linux-gnu/pkcs11/libtpm2_pkcs11.so';

export interface Tpm2Pkcs11 {
  readonly label: string;
  /** Environment for child processes (the CLI) that must see this token. */
  readonly env: NodeJS.ProcessEnv;
  uri(extra?: string): string;
  stop(): Promise<void>;
}

function spawnLogged(command: string, args: string[], env: NodeJS.ProcessEnv): ChildProcess {
  return spawn(command, args, { env, stdio: ['ignore', 'ignore', 'pipe'] });
}

async function waitFor(check: () => Promise<boolean>, what: string): Promise<void> {
  for (let attempt = 0; attempt < 100; attempt++) {
    if (await check()) return;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  throw new Error(`${what} did not come up`);
}

/**
 * A fresh swtpm, D-Bus session bus, tpm2-abrmd and tpm2-pkcs11 store with one token (user PIN in a
 * 0600 file). Sets TPM2_PKCS11_TCTI, TPM2_PKCS11_STORE and DBUS_SESSION_BUS_ADDRESS in this process
 * too, because the module reads them at C_Initialize.
 */
export async function startTpm2Pkcs11(label = 'ironroot-tpm'): Promise<Tpm2Pkcs11> {
  const dir = await mkdtemp(join(tmpdir(), 'ironroot-tpm2pkcs11-'));
  const store = join(dir, 'store');
  await mkdir(store);
  const swtpm: Swtpm = await startSwtpm();
  const children: ChildProcess[] = [];
  const stop = async () => {
    for (const child of children.reverse()) {
      if (child.exitCode === null && child.signalCode === null) {
        const exited = new Promise((resolve) => child.once('exit', resolve));
        child.kill('SIGTERM');
        await exited;
      }
    }
    await swtpm.stop();
    await rm(dir, { recursive: true, force: true });
  };
  try {
    const busSocket = join(dir, 'bus');
    const bus = spawnLogged(
      'dbus-daemon',
      ['--session', '--nofork', `--address=unix:path=${busSocket}`],
      process.env,
    );
    children.push(bus);
    const busAddress = `unix:path=${busSocket}`;
    const env: NodeJS.ProcessEnv = {
      ...process.env,
      DBUS_SESSION_BUS_ADDRESS: busAddress,
      TPM2TOOLS_TCTI: 'tabrmd:bus_type=session',
      TPM2_PKCS11_TCTI: 'tabrmd:bus_type=session',
      TPM2_PKCS11_STORE: store,
    };
    await waitFor(async () => {
      try {
        await run(
          'dbus-send',
          ['--session', '--dest=org.freedesktop.DBus', '/', 'org.freedesktop.DBus.Peer.Ping'],
          {
            env,
          },
        );
        return true;
      } catch {
        return false;
      }
    }, 'dbus-daemon');
    const root = process.getuid?.() === 0 ? ['--allow-root'] : [];
    children.push(spawnLogged('tpm2-abrmd', [...root, '--session', `--tcti=${swtpm.tcti}`], env));
    await waitFor(async () => {
      try {
        await run('tpm2_getcap', ['properties-fixed'], { env });
        return true;
      } catch {
        return false;
      }
    }, 'tpm2-abrmd');
    await run('tpm2_ptool', ['init', `--path=${store}`], { env });
    const pin = '31415926';
    await run(
      'tpm2_ptool',
      ['addtoken', '--pid=1', `--label=${label}`, '--sopin=27182818', `--userpin=${pin}`, `--path=${store}`],
      { env },
    );
    const pinFile = join(dir, 'user.pin');
    await writeFile(pinFile, `${pin}\n`, { mode: 0o600 });
    for (const name of ['DBUS_SESSION_BUS_ADDRESS', 'TPM2_PKCS11_TCTI', 'TPM2_PKCS11_STORE'] as const)
      process.env[name] = env[name];
    return {
      label,
      env,
      uri: (extra = '') =>
        `pkcs11:token=${label};module-path=${TPM2_PKCS11_MODULE};pin-source=file:${pinFile}${extra}`,
      stop,
    };
  } catch (error) {
    await stop();
    throw error;
  }
}
