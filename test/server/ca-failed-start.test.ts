import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import BetterSqlite3 from 'better-sqlite3';
import { pino } from 'pino';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { type KeyManager, openKeyManager } from '../../src/hsm/index.js';
import { CertificateAuthority } from '../../src/server/ca/authority.js';
import { type Datastore, openSqliteDatastore, SQLITE_FILE } from '../../src/server/datastore/index.js';
import { createSoftHsm, type SoftHsm } from '../helpers/softhsm.js';

const H = 3600;
const T0 = 1_800_000_000;

describe('a CA open that fails part-way on SoftHSM2 and SQLite', () => {
  let softhsm: SoftHsm;
  let dir: string;
  let datastore: Datastore;
  let keys: KeyManager;
  const clock = { t: T0 * 1000, now: () => clock.t };

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

  /** The datastore refuses to journal any new JWT key, as a failing disk would. */
  const refuseJwtWrites = () => {
    const sqlite = new BetterSqlite3(join(dir, SQLITE_FILE));
    try {
      sqlite.exec(`CREATE TRIGGER refuse_jwt BEFORE INSERT ON ca_journal
        WHEN NEW.authority = 'jwt' AND NEW.key_id NOT IN (SELECT key_id FROM ca_journal)
        BEGIN SELECT RAISE(ABORT, 'disk says no'); END`);
    } finally {
      sqlite.close();
    }
  };

  const tokenObjects = async () => {
    const { stdout } = await softhsm.tool('--list-objects');
    return stdout.split('\n').filter((line) => /^\S.*object/i.test(line));
  };

  beforeEach(async () => {
    clock.t = T0 * 1000;
    softhsm = await createSoftHsm('failed-open');
    dir = join(mkdtempSync(join(tmpdir(), 'ironroot-ca-')), 'data');
    datastore = (await openSqliteDatastore(dir, clock)).datastore;
    keys = await openKeyManager(softhsm.uri());
  });
  afterEach(async () => {
    await keys.close();
    await datastore.close();
    await softhsm.cleanup();
  });

  it('a first start whose JWT journal write fails leaves no keys on the token and an empty journal', async () => {
    refuseJwtWrites();
    await expect(open()).rejects.toThrow(/disk says no/);
    expect(await tokenObjects()).toEqual([]);
    expect(await datastore.listCaSlots()).toEqual([]);
  });

  it('a later start that fails while rotating destroys only the keys it prepared, never the journaled ones', async () => {
    const first = await open();
    const journaled = first.slots.map((s) => s.keyId).sort();
    expect(journaled).toHaveLength(2);
    // Past half the CA lifetime both authorities prepare a key; the x509 one commits, the jwt one cannot.
    clock.t = (T0 + 13 * H) * 1000;
    refuseJwtWrites();
    await expect(open()).rejects.toThrow(/disk says no/);
    expect((await datastore.listCaSlots()).map((s) => `${s.keyId}:${s.state}`).sort()).toEqual(
      journaled.map((id) => `${id}:active`),
    );
    expect((await keys.listKeys()).map((k) => k.id).sort()).toEqual(journaled);
    expect(await tokenObjects()).toHaveLength(4);
  });
});
