import { describe, expect, it } from 'vitest';
import { openKeyManager } from '../../src/hsm/open.js';
import { meteredKeyManager } from '../../src/server/ca/metered-keys.js';
import { ServerMetrics } from '../../src/server/metrics.js';
import { parseMetrics, samplesOf, sumOf } from '../helpers/metrics.js';
import { createSoftHsm } from '../helpers/softhsm.js';

/** docs/operations.md: ironroot_hsm_sign_errors_total counts what the key manager refused, by code. */
describe('HSM sign metrics around a real SoftHSM key manager', () => {
  it('counts a failed signature by its HsmError code, and times it too', async () => {
    const hsm = await createSoftHsm('ironroot-sign-metrics');
    const metrics = new ServerMetrics();
    const keys = meteredKeyManager(await openKeyManager(hsm.uri()), {
      duration: metrics.hsmSignDuration,
      errors: metrics.hsmSignErrors,
    });
    try {
      await keys.generateKey('metered', 'ec-p256');
      const signer = await keys.signer('metered', 'ES256');
      expect((await signer.sign(new Uint8Array([1, 2, 3]))).length).toBe(64);
      await keys.destroyKey('metered');
      const refused = await signer.sign(new Uint8Array([1, 2, 3])).catch((error: unknown) => error);
      expect(refused).toMatchObject({ name: 'HsmError' });
      const samples = parseMetrics(await metrics.registry.metrics());
      expect(samplesOf(samples, 'ironroot_hsm_sign_errors_total')).toEqual([
        {
          name: 'ironroot_hsm_sign_errors_total',
          labels: { key_manager: 'pkcs11', code: (refused as { code: string }).code },
          value: 1,
        },
      ]);
      expect(sumOf(samples, 'ironroot_hsm_sign_duration_seconds_count', { key_manager: 'pkcs11' })).toBe(2);
    } finally {
      await keys.close();
      await hsm.cleanup();
    }
  });
});
