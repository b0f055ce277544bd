/**
 * Two CertificateAuthority objects, as two servers would run them, over one PostgreSQL database and
 * one SoftHSM2 token (each with its own pool and its own PKCS#11 sessions), driven by one fake clock.
 */
import { generateKeyPairSync } from 'node:crypto';
import pg from 'pg';
import { pino } from 'pino';
import { afterAll, afterEach, beforeEach, describe, expect, it } from 'vitest';
import { type KeyManager, openKeyManager } from '../../src/hsm/index.js';
import { CertificateAuthority, ROTATION_LEASE_MS } from '../../src/server/ca/authority.js';
import { activationTime, preparationTime } from '../../src/server/ca/rotation.js';
import type { CaSlot, Datastore } from '../../src/server/datastore/index.js';
import { openPostgresDatastore } from '../../src/server/datastore/postgres.js';
import { SpiffeId } from '../../src/spiffe/index.js';
import { startPostgres, type TestPostgres } from '../helpers/postgres.js';
import { createSoftHsm, type SoftHsm } from '../helpers/softhsm.js';

const H = 3600;
const T0 = 1_800_000_000;

let postgres: TestPostgres | undefined;
let databases = 0;
afterAll(async () => {
  await postgres?.stop();
});

interface Server {
  datastore: Datastore;
  keys: KeyManager;
}

describe('two servers sharing one PostgreSQL datastore and one SoftHSM2 token', () => {
  let softhsm: SoftHsm;
  let servers: Server[];
  let a: Server;
  let b: Server;
  const clock = { t: T0 * 1000, now: () => clock.t };
  const at = (seconds: number) => {
    clock.t = seconds * 1000;
  };

  const open = (server: Server, holder: string, keyManager: KeyManager = server.keys) =>
    CertificateAuthority.open({
      trustDomain: 'example.org',
      keyManager,
      datastore: server.datastore,
      clock,
      logger: pino({ level: 'silent' }),
      caTtl: 24 * H,
      keyType: 'ec-p256',
      refreshHint: 300,
      holder,
    });
  const journal = async () =>
    (await a.datastore.listCaSlots()).map((s) => `${s.authority}:${s.slot}:${s.state}:${s.keyId}`).sort();
  const states = (slots: readonly CaSlot[], kind: 'x509' | 'jwt') =>
    slots
      .filter((s) => s.authority === kind)
      .map((s) => `${s.slot}:${s.state}`)
      .sort();
  const slot = (ca: CertificateAuthority, kind: 'x509' | 'jwt', state: CaSlot['state']) => {
    const found = ca.slots.find((s) => s.authority === kind && s.state === state);
    if (found === undefined) throw new Error(`no ${state} ${kind} slot`);
    return found;
  };
  /** Private keys on the token, as a third process would list them. */
  const tokenKeyIds = async () => (await a.keys.listKeys()).map((k) => k.id).sort();
  const journaledKeyIds = async () => (await a.datastore.listCaSlots()).map((s) => s.keyId).sort();
  const audited = async (action: string) =>
    (await a.datastore.listAudit(10_000)).filter((r) => r.action === action).length;

  beforeEach(async () => {
    clock.t = T0 * 1000;
    softhsm = await createSoftHsm('shared-ca');
    postgres ??= await startPostgres();
    const name = `ironroot_ca_${++databases}`;
    const admin = new pg.Client({ connectionString: postgres.connectionString });
    await admin.connect();
    await admin.query(`CREATE DATABASE ${name}`);
    await admin.end();
    const url = postgres.connectionString.replace('/postgres?', `/${name}?`);
    servers = [];
    for (let i = 0; i < 2; i++) {
      servers.push({
        datastore: (await openPostgresDatastore(url, clock)).datastore,
        keys: await openKeyManager(softhsm.uri()),
      });
    }
    [a, b] = servers as [Server, Server];
  });
  afterEach(async () => {
    for (const server of servers) {
      await server.keys.close();
      await server.datastore.close();
    }
    await softhsm.cleanup();
  });

  it('prepares and activates once per rotation when both check at once, round after round', async () => {
    const [caA, caB] = await Promise.all([open(a, 'server-a'), open(b, 'server-b')]);
    // Started together on an empty journal: one created the keys, the other waited for them.
    expect(await audited('ca.x509.init')).toBe(1);
    expect(await audited('ca.jwt.init')).toBe(1);
    const rounds = 6;
    for (let round = 1; round <= rounds; round++) {
      // The server that left the step to the other learns of it at its next check.
      await caA.refresh();
      at(preparationTime(slot(caA, 'x509', 'active')));
      await Promise.all([caA.rotate(), caB.rotate()]);
      expect(await audited('ca.x509.prepare')).toBe(round);
      expect(await audited('ca.jwt.prepare')).toBe(round);
      await caB.refresh();
      expect(caB.slots.filter((s) => s.state === 'prepared')).toHaveLength(2);
      await caA.refresh();
      at(activationTime(slot(caA, 'x509', 'active')));
      await Promise.all([caA.rotate(), caB.rotate()]);
      expect(await audited('ca.x509.activate')).toBe(round);
      expect(await audited('ca.jwt.activate')).toBe(round);
      // Both see the same journal, and the token holds exactly the keys it names: no key was
      // generated by a server that then lost the race.
      await Promise.all([caA.refresh(), caB.refresh()]);
      expect(caA.slots.map((s) => s.keyId)).toEqual(caB.slots.map((s) => s.keyId));
      expect(await tokenKeyIds()).toEqual(await journaledKeyIds());
    }
    // Keys a day past expiry were pruned (by one of them) and destroyed on the token.
    expect(await audited('ca.prune')).toBeGreaterThan(0);
    await caB.refresh();
    expect(caB.bundle().marshal()).toBe(caA.bundle().marshal());
  });

  it('serves the bundle another server published and signs with the key it activated, found on the token by id', async () => {
    const caA = await open(a, 'server-a');
    const caB = await open(b, 'server-b');
    let reloads = 0;
    caB.onChange(async () => {
      reloads++;
    });
    const before = caB.bundle().sequenceNumber;

    const prepared = await caA.prepare('x509', 'uid:0');
    await caB.rotate();
    expect(reloads).toBe(1);
    expect(caB.bundle().marshal()).toBe(caA.bundle().marshal());
    expect(caB.bundle().sequenceNumber).toBe((before ?? 0n) + 1n);
    expect(caB.bundle().x509Authorities).toHaveLength(2);

    await caA.activate('x509', 'uid:0');
    await caA.prepare('jwt', 'uid:0');
    const jwtKey = (await caA.activate('jwt', 'uid:0')).keyId;
    // B has not run a rotation check since; signing looks at the journal (at most once a second).
    clock.t += 1000;
    const { publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const minted = await caB.mintX509Svid({
      spiffeId: SpiffeId.parse('spiffe://example.org/w'),
      publicKey,
      ttl: H,
    });
    expect(minted.authority).toBe(prepared.keyId);
    const issuer = caB.bundle().x509Authorities.find((c) => minted.chain[0]?.checkIssued(c));
    expect(issuer !== undefined && minted.chain[0]?.verify(issuer.publicKey)).toBe(true);
    const jwt = await caB.mintJwtSvid({
      spiffeId: SpiffeId.parse('spiffe://example.org/w'),
      audience: ['x'],
      ttl: 60,
    });
    const header = JSON.parse(Buffer.from(jwt.token.split('.')[0] ?? '', 'base64url').toString('utf8'));
    expect(header.kid).toBe(jwtKey);
    expect(reloads).toBe(2);
    expect(states(caB.slots, 'x509')).toEqual(['A:old', 'B:active']);
  });

  it('a holder that stalls after preparing loses the lease when it runs out; the other activates, and the stalled one then changes nothing', async () => {
    const caA = await open(a, 'server-a');
    const caB = await open(b, 'server-b');
    // A's first reaction to a change never returns: A is stuck right after journaling the prepare,
    // holding the lease, as a server that hangs (or is killed) mid-rotation would.
    let stalled: () => void = () => undefined;
    const entered = new Promise<void>((resolveEntered) => {
      let first = true;
      caA.onChange(async () => {
        if (!first) return;
        first = false;
        resolveEntered();
        await new Promise<void>((resolve) => {
          stalled = resolve;
        });
      });
    });
    // Past the activation time: a healthy holder would prepare and activate in one go.
    at(activationTime(slot(caA, 'x509', 'active')));
    const rotationA = caA.rotate();
    await entered;
    expect(states(await a.datastore.listCaSlots(), 'x509')).toEqual(['A:active', 'B:prepared']);

    // While A's lease lasts, B leaves the step to A, and an operator command on B is refused.
    await caB.rotate();
    expect(states(caB.slots, 'x509')).toEqual(['A:active', 'B:prepared']);
    await expect(caB.activate('x509', 'uid:0')).rejects.toMatchObject({
      code: 'ERR_CA_LEASE_HELD',
      message: expect.stringMatching(/server-a .*holds the rotation lease until/),
    });

    clock.t += ROTATION_LEASE_MS;
    await caB.rotate();
    expect(states(caB.slots, 'x509')).toEqual(['A:old', 'B:active']);
    expect(states(caB.slots, 'jwt')).toEqual(['A:old', 'B:active']);
    const after = await journal();
    expect(await audited('ca.x509.prepare')).toBe(1);

    // A wakes up: it renews the lease, finds the journal moved on, and changes nothing.
    stalled();
    await rotationA;
    expect(await journal()).toEqual(after);
    expect(caA.slots.map((s) => s.keyId)).toEqual(caB.slots.map((s) => s.keyId));
    expect(await tokenKeyIds()).toEqual(await journaledKeyIds());
    // The key A prepared is the one that signs now.
    const { publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    clock.t += 1000;
    const minted = await caA.mintX509Svid({
      spiffeId: SpiffeId.parse('spiffe://example.org/w'),
      publicKey,
      ttl: H,
    });
    expect(minted.authority).toBe(slot(caB, 'x509', 'active').keyId);
  });

  it('a holder whose lease runs out while it generates a key writes nothing, and destroys that key again', async () => {
    // A's token, with each new key held back after it was generated on the token, until released:
    // a server that stalls between generating a key and journaling it.
    let release: () => void = () => undefined;
    let generated: (id: string) => void = () => undefined;
    const held = new Promise<string>((resolve) => {
      generated = resolve;
    });
    let holding = false;
    const stalling: KeyManager = {
      kind: a.keys.kind,
      async generateKey(id, type) {
        const key = await a.keys.generateKey(id, type);
        if (holding) {
          generated(id);
          await new Promise<void>((resolve) => {
            release = resolve;
          });
        }
        return key;
      },
      getKey: (id) => a.keys.getKey(id),
      listKeys: () => a.keys.listKeys(),
      sign: (id, scheme, data) => a.keys.sign(id, scheme, data),
      signer: (id, algorithm) => a.keys.signer(id, algorithm),
      destroyKey: (id) => a.keys.destroyKey(id),
      close: () => a.keys.close(),
    };
    const caA = await open(a, 'server-a', stalling);
    const caB = await open(b, 'server-b');
    holding = true;
    at(activationTime(slot(caA, 'x509', 'active')));
    const rotationA = caA.rotate();
    const stalledKey = await held;
    // On the token, named by no journal: what "hsm keys list" reports as an orphan.
    expect(await tokenKeyIds()).toContain(stalledKey);
    expect(await journaledKeyIds()).not.toContain(stalledKey);

    clock.t += ROTATION_LEASE_MS;
    await caB.rotate();
    expect(states(caB.slots, 'x509')).toEqual(['A:old', 'B:active']);
    const after = await journal();

    release();
    await expect(rotationA).rejects.toMatchObject({ code: 'ERR_CA_JOURNAL_CONFLICT' });
    expect(await journal()).toEqual(after);
    expect(await tokenKeyIds()).not.toContain(stalledKey);
    expect(await tokenKeyIds()).toEqual(await journaledKeyIds());
    expect(caA.slots.map((s) => s.keyId)).toEqual(caB.slots.map((s) => s.keyId));
    // The next check of A finds nothing to do.
    await caA.rotate();
    expect(await journal()).toEqual(after);
  });

  it('refuses an operator command while another server holds the lease, naming it, and runs it once the lease is given up', async () => {
    const caA = await open(a, 'server-a');
    const caB = await open(b, 'server-b');
    // What A holds while it rotates or runs an operator command.
    await a.datastore.acquireLease('ca-rotation', 'server-a', clock.now(), ROTATION_LEASE_MS);
    for (const command of [() => caB.prepare('x509', 'uid:0'), () => caB.prepare('jwt', 'uid:0')]) {
      await expect(command()).rejects.toMatchObject({
        code: 'ERR_CA_LEASE_HELD',
        message: expect.stringContaining('server-a'),
      });
    }
    expect(await audited('ca.x509.prepare')).toBe(0);
    await a.datastore.releaseLease('ca-rotation', 'server-a');
    await caB.prepare('x509', 'uid:0');
    // A command on A now sees the key B prepared.
    await expect(caA.prepare('x509', 'uid:0')).rejects.toMatchObject({ code: 'ERR_CA_ALREADY_PREPARED' });
    await caA.activate('x509', 'uid:0');
    expect(states(caA.slots, 'x509')).toEqual(['A:old', 'B:active']);
    expect(await audited('ca.x509.prepare')).toBe(1);
  });
});
