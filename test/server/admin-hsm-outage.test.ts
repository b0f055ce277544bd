import { readdir, rename } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startAttestServer, TD, type TestServer } from '../attestation/harness.js';
import { cli } from '../helpers/server.js';
import { SOFTHSM_MODULE } from '../helpers/softhsm.js';

const require = createRequire(import.meta.url);
const pkcs11js = require('pkcs11js') as typeof import('pkcs11js');

/**
 * Finalises the SoftHSM library behind the server's back, from a second handle in this process (the
 * server runs here too), as test/hsm/pkcs11-faults.test.ts does: the server must open it again.
 */
function finaliseBehindServersBack(): void {
  const other = new pkcs11js.PKCS11();
  other.load(SOFTHSM_MODULE);
  try {
    other.C_Initialize({ flags: pkcs11js.CKF_OS_LOCKING_OK });
  } catch (error) {
    if ((error as { code?: number }).code !== pkcs11js.CKR_CRYPTOKI_ALREADY_INITIALIZED) throw error;
  }
  other.C_Finalize();
}

describe('an HSM outage at the admin API, through the built CLI', () => {
  let server: TestServer;

  beforeAll(async () => {
    server = await startAttestServer();
  });

  afterAll(async () => {
    await server?.stop();
  });

  it('x509 mint reports ERR_HSM_UNAVAILABLE while the token is gone, not an internal error', async () => {
    const mint = () =>
      cli([
        'x509',
        'mint',
        '--admin-socket',
        server.adminSocket,
        '--spiffe-id',
        `spiffe://${TD}/workload/hsm`,
      ]);
    expect((await mint()).code).toBe(0);

    // startAttestServer's SoftHSM: its config file beside its token directory.
    const conf = process.env.SOFTHSM2_CONF;
    if (conf === undefined) throw new Error('SOFTHSM2_CONF is not set');
    const tokenRoot = join(conf, '..', 'tokens');
    const [tokenDir] = await readdir(tokenRoot);
    if (tokenDir === undefined) throw new Error('no token directory');
    const away = join(tokenRoot, '..', 'unplugged');
    finaliseBehindServersBack();
    await rename(join(tokenRoot, tokenDir), away);
    try {
      const result = await mint();
      expect(result.code).toBe(1);
      expect(result.stderr).toMatch(/^Error \(ERR_HSM_UNAVAILABLE\): the HSM failed: /);
      expect(result.stderr).not.toContain('internal error');
      expect(server.logs.lines).toContainEqual(
        expect.objectContaining({ msg: 'admin API call failed', error_code: 'ERR_HSM_UNAVAILABLE' }),
      );
    } finally {
      await rename(away, join(tokenRoot, tokenDir));
    }
  });
});
