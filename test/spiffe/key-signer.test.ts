import { verify } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { createKeySigner } from '../../src/spiffe/key-signer.js';
import { newKeyPair } from '../../src/spiffe/new-key-pair.js';

const data = Buffer.from('to be signed');

describe('createKeySigner', () => {
  it('picks ES256 for P-256 and returns r‖s (64 bytes) that verifies as IEEE P1363', async () => {
    const { privateKey, publicKey } = newKeyPair('ec', { namedCurve: 'P-256' });
    const signer = createKeySigner(privateKey);
    expect(signer.algorithm).toBe('ES256');
    expect(signer.publicKey.equals(publicKey)).toBe(true);
    const sig = await signer.sign(data);
    expect(sig).toHaveLength(64);
    expect(verify('sha256', data, { key: publicKey, dsaEncoding: 'ieee-p1363' }, sig)).toBe(true);
  });

  it('picks ES384 for P-384 and RS256 for RSA, and signs PS384 with a 48-byte salt', async () => {
    expect(createKeySigner(newKeyPair('ec', { namedCurve: 'P-384' }).privateKey).algorithm).toBe('ES384');
    const rsa = newKeyPair('rsa', { modulusLength: 2048 });
    expect(createKeySigner(rsa.privateKey).algorithm).toBe('RS256');
    const sig = await createKeySigner(rsa.privateKey, 'PS384').sign(data);
    expect(verify('sha384', data, { key: rsa.publicKey, padding: 6, saltLength: 48 }, sig)).toBe(true);
  });

  it('rejects an algorithm that does not fit the key, and a public key', () => {
    const ec = newKeyPair('ec', { namedCurve: 'P-256' });
    expect(() => createKeySigner(ec.privateKey, 'RS256')).toThrow(/does not fit a ec key/);
    const rsa = newKeyPair('rsa', { modulusLength: 2048 });
    expect(() => createKeySigner(rsa.privateKey, 'ES256')).toThrow(/does not fit a rsa key/);
    expect(() => createKeySigner(ec.publicKey)).toThrow(/private key/);
  });
});
