import type { X509Certificate } from 'node:crypto';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { KeyManager } from '../../src/hsm/index.js';
import { openMemoryKeyManager } from '../../src/hsm/index.js';
import { CertificateAuthority } from '../../src/server/ca/authority.js';
import type { Datastore } from '../../src/server/datastore/index.js';
import { openSqliteDatastore } from '../../src/server/datastore/index.js';
import { SpiffeBundle, SpiffeId, TrustDomain } from '../../src/spiffe/index.js';
import { newKeyPair } from '../../src/spiffe/new-key-pair.js';
import { opensslVerify, px, tempDir } from '../helpers/x509.js';

const H = 3600;
const T0 = 1_800_000_000;
const TD = TrustDomain.parse('example.org');

describe('CA rotation driven by a fake clock', () => {
  let dir: string;
  let datastore: Datastore;
  let keys: KeyManager;
  const clock = { t: T0 * 1000, now: () => clock.t };
  const at = (seconds: number) => {
    clock.t = (T0 + seconds) * 1000;
  };

  const open = () =>
    CertificateAuthority.open({
      trustDomain: 'example.org',
      keyManager: keys,
      datastore,
      clock,
      logger: pino({ level: 'silent' }),
      caTtl: 24 * H,
      keyType: 'ec-p256',
      refreshHint: 300,
    });
  const state = (ca: CertificateAuthority, kind: 'x509' | 'jwt') =>
    ca.slots.filter((s) => s.authority === kind).map((s) => `${s.slot}:${s.state}`);
  const bundleCas = (ca: CertificateAuthority) => ca.bundle().x509Authorities.map((c) => c.serialNumber);
  const issuerSerial = async (ca: CertificateAuthority) => {
    const { publicKey } = newKeyPair('ec', { namedCurve: 'P-256' });
    const { chain } = await ca.mintX509Svid({
      spiffeId: SpiffeId.parse('spiffe://example.org/w'),
      publicKey,
      ttl: H,
    });
    const leaf = chain[0];
    if (!leaf) throw new Error('no leaf');
    return ca.bundle().x509Authorities.find((c) => leaf.checkIssued(c) && leaf.verify(c.publicKey))
      ?.serialNumber;
  };

  beforeEach(async () => {
    clock.t = T0 * 1000;
    dir = join(mkdtempSync(join(tmpdir(), 'ironroot-ca-')), 'data');
    datastore = (await openSqliteDatastore(dir, clock)).datastore;
    keys = openMemoryKeyManager();
  });
  afterEach(async () => {
    await datastore.close();
  });

  it('starts with one active key per authority, published in the bundle', async () => {
    const ca = await open();
    expect(state(ca, 'x509')).toEqual(['A:active']);
    expect(state(ca, 'jwt')).toEqual(['A:active']);
    const bundle = ca.bundle();
    expect(bundle.x509Authorities).toHaveLength(1);
    expect([...bundle.jwtAuthorities.keys()]).toEqual(
      ca.slots.filter((s) => s.authority === 'jwt').map((s) => s.keyId),
    );
    expect(bundle.sequenceNumber).toBe(2n);
  });

  it('prepares at half life, activates with a sixth left, keeps both CAs across the switch', async () => {
    const ca = await open();
    const first = bundleCas(ca)[0];
    at(12 * H - 1);
    await ca.rotate();
    expect(state(ca, 'x509')).toEqual(['A:active']);

    at(12 * H);
    await ca.rotate();
    expect(state(ca, 'x509')).toEqual(['A:active', 'B:prepared']);
    expect(state(ca, 'jwt')).toEqual(['A:active', 'B:prepared']);
    const both = bundleCas(ca);
    expect(both).toHaveLength(2);
    expect(await issuerSerial(ca)).toBe(first);

    at(20 * H - 1);
    await ca.rotate();
    expect(state(ca, 'x509')).toEqual(['A:active', 'B:prepared']);

    at(20 * H);
    await ca.rotate();
    expect(state(ca, 'x509')).toEqual(['A:old', 'B:active']);
    expect(bundleCas(ca)).toEqual(both);
    const second = both[1];
    expect(await issuerSerial(ca)).toBe(second);
  });

  it('returns each SVID chain as DER and, parsed on first use, the same certificates (cross-signed chain too)', async () => {
    const ca = await open();
    const { publicKey } = newKeyPair('ec', { namedCurve: 'P-256' });
    const spiffeId = SpiffeId.parse('spiffe://example.org/server');
    const hex = (bytes: Uint8Array) => Buffer.from(bytes).toString('hex');
    const agree = (minted: { chainDer: readonly Uint8Array[]; chain: readonly X509Certificate[] }) =>
      expect(minted.chainDer.map(hex)).toEqual(minted.chain.map((c) => hex(c.raw)));
    const first = await ca.mintX509Svid({ spiffeId, publicKey, ttl: H });
    expect(first.chainDer).toHaveLength(1);
    agree(first);
    expect(first.chain[0]?.verify(ca.bundle().x509Authorities[0]?.publicKey ?? publicKey)).toBe(true);
    await ca.prepare('x509', 'test');
    await ca.activate('x509', 'test');
    // The previous key is still on the token: the server's own SVID carries the cross-certificate.
    const server = await ca.mintServerSvid({ spiffeId, publicKey, ttl: H });
    expect(server.chainDer).toHaveLength(2);
    agree(server);
    const [leaf, cross] = server.chain;
    if (!leaf || !cross) throw new Error('no chain');
    expect(leaf.checkIssued(cross)).toBe(true);
    expect(leaf.verify(cross.publicKey)).toBe(true);
  });

  it('issues from the new CA once it is active, though the previous one was parsed and cached', async () => {
    const ca = await open();
    const { publicKey } = newKeyPair('ec', { namedCurve: 'P-256' });
    const spiffeId = SpiffeId.parse('spiffe://example.org/w');
    const mint = async () => {
      const leaf = (await ca.mintX509Svid({ spiffeId, publicKey, ttl: H })).chain[0];
      if (!leaf) throw new Error('no leaf');
      return leaf;
    };
    const ski = (cert: X509Certificate) =>
      new px.X509Certificate(cert.raw).getExtension(px.SubjectKeyIdentifierExtension)?.keyId;
    const aki = (cert: X509Certificate) =>
      new px.X509Certificate(cert.raw).getExtension(px.AuthorityKeyIdentifierExtension)?.keyId;
    // Two SVIDs from the first CA: the second one comes from its cached parse.
    const [oldCa] = ca.bundle().x509Authorities;
    if (!oldCa) throw new Error('no CA');
    for (const leaf of [await mint(), await mint()]) {
      expect(leaf.verify(oldCa.publicKey)).toBe(true);
      expect(aki(leaf)).toBe(ski(oldCa));
    }
    await ca.prepare('x509', 'test');
    await ca.activate('x509', 'test');
    const newCa = ca.bundle().x509Authorities.find((c) => c.serialNumber !== oldCa.serialNumber);
    if (!newCa) throw new Error('no new CA');
    expect(ski(newCa)).not.toBe(ski(oldCa));
    const leaf = await mint();
    expect(leaf.verify(newCa.publicKey)).toBe(true);
    expect(leaf.verify(oldCa.publicKey)).toBe(false);
    expect(aki(leaf)).toBe(ski(newCa));
    expect(leaf.issuer).toBe(newCa.subject);
    // Byte for byte what a server that never saw the first CA issues: a fresh open parses anew.
    const fresh = (await (await open()).mintX509Svid({ spiffeId, publicKey, ttl: H })).chain[0];
    if (!fresh) throw new Error('no leaf');
    const tbsFields = (cert: X509Certificate) => {
      const p = new px.X509Certificate(cert.raw);
      return {
        issuer: Buffer.from(p.issuerName.toArrayBuffer()).toString('hex'),
        extensions: p.extensions.map((e) => [e.type, e.critical, Buffer.from(e.value).toString('hex')]),
      };
    };
    expect(tbsFields(leaf)).toEqual(tbsFields(fresh));
    const files = tempDir();
    try {
      const root = files.write('new-ca.pem', newCa.toString());
      const leafFile = files.write('leaf.pem', leaf.toString());
      // The fake clock is in the future: openssl judges the dates at it.
      const when = { at: new Date(clock.t + 1000) };
      expect(await opensslVerify(root, leafFile, when)).toMatchObject({ ok: true });
      const stale = files.write('old-ca.pem', oldCa.toString());
      expect((await opensslVerify(stale, leafFile, when)).ok).toBe(false);
    } finally {
      files.cleanup();
    }
  });

  it('prunes an old CA a day after it expired and destroys its key then, not before', async () => {
    const ca = await open();
    const firstX509 = ca.slots.find((s) => s.authority === 'x509')?.keyId ?? '';
    for (let hour = 1; hour <= 47; hour++) {
      at(hour * H);
      await ca.rotate();
    }
    // Keys: A 0–24h, B 12–36h (active at 20h), A' 24–48h (active at 32h), B' 36–60h (active at 44h).
    // A expired at 24h; at 47h it is still published, and its key still on the token.
    expect(ca.slots.some((s) => s.keyId === firstX509)).toBe(true);
    expect(await keys.getKey(firstX509)).toBeDefined();
    expect(state(ca, 'x509')).toEqual(['A:old', 'B:old', 'A:old', 'B:active']);

    at(48 * H);
    await ca.rotate();
    expect(ca.slots.some((s) => s.keyId === firstX509)).toBe(false);
    expect(await keys.getKey(firstX509)).toBeUndefined();
    // 48h is also the half-life of the newest key: its successor is prepared in the same pass.
    expect(state(ca, 'x509')).toEqual(['B:old', 'A:old', 'B:active', 'A:prepared']);
  });

  it('resumes the same keys at the same step after a restart mid-rotation', async () => {
    const ca = await open();
    at(12 * H);
    await ca.rotate();
    const before = ca.slots.map((s) => [s.keyId, s.state]);
    const sequence = ca.bundle().sequenceNumber;

    const audited = (await datastore.listAudit(1000)).length;
    const restarted = await open();
    expect(restarted.slots.map((s) => [s.keyId, s.state])).toEqual(before);
    // Resuming changes nothing, so it records nothing.
    expect((await datastore.listAudit(1000)).length).toBe(audited);
    expect(restarted.bundle().sequenceNumber).toBe(sequence);
    at(20 * H);
    await restarted.rotate();
    expect(state(restarted, 'x509')).toEqual(['A:old', 'B:active']);
    for (const slot of restarted.slots) expect(await keys.getKey(slot.keyId)).toBeDefined();
  });

  it('stores the bundle it serves, with a sequence that grows with each change', async () => {
    const ca = await open();
    at(12 * H);
    await ca.rotate();
    const stored = await datastore.getBundle('example.org');
    const parsed = SpiffeBundle.parse(TD, stored?.document ?? '');
    expect(parsed.sequenceNumber).toBe(BigInt(stored?.sequence ?? 0));
    expect(parsed.sequenceNumber).toBe(ca.bundle().sequenceNumber);
    expect(parsed.refreshHintSeconds).toBe(300);
    expect(parsed.x509Authorities).toHaveLength(2);
    // Activation publishes nothing new, so the sequence stays.
    at(20 * H);
    await ca.rotate();
    expect(ca.bundle().sequenceNumber).toBe(parsed.sequenceNumber);
  });

  it('serves the bundle it stored, built once per journal state and again after every change', async () => {
    const ca = await open();
    const stored = async () => (await datastore.getBundle('example.org'))?.document;
    const first = ca.bundle();
    expect(ca.bundle()).toBe(first);
    expect(first.marshal()).toBe(await stored());
    // Preparing publishes a second CA and a new sequence: the served bundle must show both at once.
    at(12 * H);
    await ca.rotate();
    const prepared = ca.bundle();
    expect(prepared.x509Authorities).toHaveLength(2);
    expect(prepared.sequenceNumber).toBeGreaterThan(first.sequenceNumber ?? 0n);
    expect(prepared.marshal()).toBe(await stored());
    // Activating changes the slots but not what is published: rebuilt, with the same document.
    at(20 * H);
    await ca.rotate();
    expect(state(ca, 'x509')).toEqual(['A:old', 'B:active']);
    const activated = ca.bundle();
    expect(activated).not.toBe(prepared);
    expect(activated.marshal()).toBe(prepared.marshal());
  });

  it('caps an SVID at the CA expiry', async () => {
    const ca = await open();
    const { publicKey } = newKeyPair('ec', { namedCurve: 'P-256' });
    const { chain, expiresAt } = await ca.mintX509Svid({
      spiffeId: SpiffeId.parse('spiffe://example.org/long'),
      publicKey,
      ttl: 100 * H,
    });
    expect(expiresAt).toBe(T0 + 24 * H);
    expect(Date.parse((chain[0] as X509Certificate).validTo)).toBe((T0 + 24 * H) * 1000);
  });

  it('prepares, activates, taints and revokes by hand, refusing misuse by name', async () => {
    const ca = await open();
    await expect(ca.activate('x509', 'uid:0')).rejects.toMatchObject({ code: 'ERR_CA_NOTHING_PREPARED' });
    const prepared = await ca.prepare('x509', 'uid:0');
    await expect(ca.prepare('x509', 'uid:0')).rejects.toMatchObject({ code: 'ERR_CA_ALREADY_PREPARED' });
    const old = ca.slots.find((s) => s.authority === 'x509' && s.state === 'active')?.keyId ?? '';
    await expect(ca.taint('x509', prepared.keyId, 'uid:0')).rejects.toMatchObject({
      code: 'ERR_CA_AUTHORITY_IN_USE',
    });
    await ca.activate('x509', 'uid:0');
    await expect(ca.revoke('x509', old, 'uid:0')).rejects.toMatchObject({
      code: 'ERR_CA_AUTHORITY_NOT_TAINTED',
    });
    expect((await ca.taint('x509', old, 'uid:0')).tainted).toBe(true);
    await ca.revoke('x509', old, 'uid:0');
    expect(bundleCas(ca)).toHaveLength(1);
    expect(await keys.getKey(old)).toBeUndefined();
    expect(await keys.getKey(prepared.keyId)).toBeDefined();
    await expect(ca.taint('x509', 'nope', 'uid:0')).rejects.toMatchObject({
      code: 'ERR_CA_AUTHORITY_NOT_FOUND',
    });
  });
});
