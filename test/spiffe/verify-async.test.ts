import { constants, sign, verify } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { newKeyPair } from '../../src/spiffe/new-key-pair.js';
import { verifyOffThread } from '../../src/spiffe/verify-async.js';

// The thread-pool form must decide exactly as the synchronous call it replaced.
describe('verifyOffThread', () => {
  const data = Buffer.from('to be signed');
  const ec = newKeyPair('ec', { namedCurve: 'P-256' });
  const otherEc = newKeyPair('ec', { namedCurve: 'P-256' });
  const rsa = newKeyPair('rsa', { modulusLength: 2048 });

  it('agrees with crypto.verify on good and bad ECDSA and RSA-PSS signatures', async () => {
    const cases = [
      {
        key: { key: ec.publicKey, dsaEncoding: 'der' as const },
        signature: sign('sha256', data, ec.privateKey),
      },
      {
        key: { key: ec.publicKey, dsaEncoding: 'der' as const },
        signature: sign('sha256', data, otherEc.privateKey),
      },
      {
        key: { key: rsa.publicKey, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: 32 },
        signature: sign('sha256', data, {
          key: rsa.privateKey,
          padding: constants.RSA_PKCS1_PSS_PADDING,
          saltLength: 32,
        }),
      },
      {
        key: { key: rsa.publicKey, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: 32 },
        signature: sign('sha256', Buffer.from('something else'), rsa.privateKey),
      },
    ];
    const verdicts = await Promise.all(cases.map((c) => verifyOffThread('sha256', data, c.key, c.signature)));
    expect(verdicts).toEqual([true, false, true, false]);
    expect(verdicts).toEqual(cases.map((c) => verify('sha256', data, c.key, c.signature)));
  });

  it('rejects where crypto.verify throws: an unknown digest', async () => {
    const signature = sign('sha256', data, ec.privateKey);
    expect(() => verify('no-such-hash', data, ec.publicKey, signature)).toThrow();
    await expect(verifyOffThread('no-such-hash', data, ec.publicKey, signature)).rejects.toThrow(/digest/i);
  });
});
