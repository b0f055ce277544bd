/**
 * The key manager as the CA uses it, with every signature timed and every failed one counted: the
 * HSM's latency and errors are what operators watch first when issuance slows or stops. Kept here,
 * not in src/hsm, so the key custody layer stays free of metrics.
 *
 * @module
 */
import type { Counter, Histogram } from 'prom-client';
import { isHsmError } from '../../hsm/errors.js';
import type { JoseAlgorithm, KeyManager, KeySigner, SignatureScheme } from '../../hsm/key-manager.js';

export interface SignMetrics {
  duration: Histogram<'key_manager'>;
  errors: Counter<'key_manager' | 'code'>;
}

/** `keys`, with sign() and the signers it hands out measured. */
export function meteredKeyManager(keys: KeyManager, metrics: SignMetrics): KeyManager {
  const labels = { key_manager: keys.kind };
  const measure = async (sign: () => Promise<Uint8Array>): Promise<Uint8Array> => {
    const end = metrics.duration.startTimer(labels);
    try {
      return await sign();
    } catch (error) {
      metrics.errors.inc({ ...labels, code: isHsmError(error) ? error.code : 'ERR_UNKNOWN' });
      throw error;
    } finally {
      end();
    }
  };
  return {
    kind: keys.kind,
    generateKey: (id, type) => keys.generateKey(id, type),
    getKey: (id) => keys.getKey(id),
    listKeys: () => keys.listKeys(),
    sign: (id: string, scheme: SignatureScheme, data: Uint8Array) =>
      measure(() => keys.sign(id, scheme, data)),
    async signer(id: string, algorithm: JoseAlgorithm): Promise<KeySigner> {
      const inner = await keys.signer(id, algorithm);
      return {
        algorithm: inner.algorithm,
        publicKey: inner.publicKey,
        sign: (data) => measure(() => inner.sign(data)),
      };
    },
    destroyKey: (id) => keys.destroyKey(id),
    close: () => keys.close(),
  };
}
