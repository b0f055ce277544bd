// A throw-away SoftHSM2 token labelled `bench` for the HSM benchmarks: its own token directory and
// config in a new temporary directory, the PIN in a 0600 file. Sets SOFTHSM2_CONF for this process,
// which SoftHSM reads at C_Initialize, so call it before any key manager opens.
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export const SOFTHSM_MODULE = '/usr/lib/softhsm/libsofthsm2.so';

/** The token's directory (remove it when done), PIN and PIN file. */
export function benchToken(prefix) {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  const tokens = join(dir, 'tokens');
  mkdirSync(tokens);
  const conf = join(dir, 'softhsm2.conf');
  writeFileSync(conf, `directories.tokendir = ${tokens}\nobjectstore.backend = file\nlog.level = ERROR\n`);
  process.env.SOFTHSM2_CONF = conf;
  const pin = 'bench-pin-1234';
  execFileSync(
    'softhsm2-util',
    ['--init-token', '--free', '--label', 'bench', '--pin', pin, '--so-pin', 'bench-so-1234'],
    { stdio: 'ignore' },
  );
  const pinFile = join(dir, 'pin');
  writeFileSync(pinFile, pin, { mode: 0o600 });
  return { dir, pin, pinFile };
}
