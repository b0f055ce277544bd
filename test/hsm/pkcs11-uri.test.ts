import { chmod, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { inspect } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { formatPkcs11Uri, parsePkcs11Uri, readPin } from '../../src/hsm/index.js';

const MODULE = 'module-path=/usr/lib/softhsm/libsofthsm2.so';

describe('parsePkcs11Uri', () => {
  it('reads path and query attributes, percent-decoding text and id bytes', () => {
    const uri = parsePkcs11Uri(
      `pkcs11:token=My%20CA;object=root-ca;id=%01%02ab?${MODULE}&pin-source=file:/etc/ironroot/pin&max-sessions=8`,
    );
    expect(uri).toMatchObject({
      token: 'My CA',
      object: 'root-ca',
      modulePath: '/usr/lib/softhsm/libsofthsm2.so',
      pinSource: { kind: 'file', path: '/etc/ironroot/pin' },
      maxSessions: 8,
      serial: undefined,
      slotId: undefined,
    });
    expect(uri.id).toEqual(Buffer.from([1, 2, 0x61, 0x62]));
  });

  it('accepts query attributes in the path part, serial and slot-id, and env: pin sources', () => {
    expect(parsePkcs11Uri(`pkcs11:serial=abc123;slot-id=7;${MODULE};pin-source=env:HSM_PIN`)).toMatchObject({
      serial: 'abc123',
      slotId: 7,
      pinSource: { kind: 'env', name: 'HSM_PIN' },
      maxSessions: 4,
    });
    expect(parsePkcs11Uri(`pkcs11:token=t;${MODULE};pin-source=file:///run/pin`).pinSource).toEqual({
      kind: 'file',
      path: '/run/pin',
    });
  });

  it.each([
    ['file:/x', 'must start with "pkcs11:"'],
    ['pkcs11:token=t', 'module-path is missing'],
    [`pkcs11:${MODULE}`, 'name the token'],
    [`pkcs11:token=t;${MODULE};pin-value=123456`, 'pin-value is refused'],
    [`pkcs11:token=t;colour=red;${MODULE}`, 'unknown attribute "colour"'],
    [`pkcs11:token=t;token=u;${MODULE}`, 'given twice'],
    [`pkcs11:slot-id=x;${MODULE}`, 'not a decimal number'],
    [`pkcs11:token=t;${MODULE};max-sessions=0`, 'max-sessions'],
    [`pkcs11:token=t;${MODULE};pin-source=relative/pin`, 'pin-source must be'],
    [`pkcs11:token=t;id=%zz;${MODULE}`, 'malformed percent-encoding'],
  ])('refuses %s with ERR_HSM_URI (%s)', (text, message) => {
    expect(() => parsePkcs11Uri(text)).toThrow(expect.objectContaining({ code: 'ERR_HSM_URI' }));
    expect(() => parsePkcs11Uri(text)).toThrow(message);
  });

  it('never echoes a pin-value it refuses', () => {
    expect(() => parsePkcs11Uri(`pkcs11:token=t;${MODULE}?pin-value=98765432`)).toThrow(
      expect.objectContaining({ message: expect.not.stringContaining('98765432') }),
    );
  });

  it('renders back without any PIN in String(), inspect and JSON', () => {
    const uri = parsePkcs11Uri(`pkcs11:token=t;object=ca;${MODULE};pin-source=env:HSM_PIN`);
    const text = formatPkcs11Uri(uri);
    expect(text).toBe(
      'pkcs11:token=t;object=ca?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=env:HSM_PIN',
    );
    expect(String(uri)).toBe(text);
    expect(inspect(uri)).toBe(`Pkcs11Uri<${text}>`);
    expect(parsePkcs11Uri(text)).toEqual(uri);
  });
});

describe('readPin', () => {
  let dir: string;

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'ironroot-pin-'));
  });

  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('reads a 0600 file up to its final newline, and hides the PIN from String, JSON and inspect', async () => {
    const path = join(dir, 'ok.pin');
    await writeFile(path, '24681357\n', { mode: 0o600 });
    const pin = await readPin({ kind: 'file', path });
    expect(pin.reveal()).toBe('24681357');
    for (const shown of [String(pin), JSON.stringify({ pin }), inspect({ pin }), `${pin}`]) {
      expect(shown).not.toContain('24681357');
      expect(shown).toContain('redacted');
    }
  });

  it.each([0o644, 0o660, 0o606])('refuses a file with mode %o as open to group or others', async (mode) => {
    const path = join(dir, `mode-${mode.toString(8)}.pin`);
    await writeFile(path, '24681357');
    await chmod(path, mode);
    await expect(readPin({ kind: 'file', path })).rejects.toMatchObject({
      code: 'ERR_HSM_PIN_SOURCE',
      message: expect.stringContaining('group or others'),
    });
  });

  it('refuses an empty file and a directory', async () => {
    const empty = join(dir, 'empty.pin');
    await writeFile(empty, '\n', { mode: 0o600 });
    await expect(readPin({ kind: 'file', path: empty })).rejects.toMatchObject({
      code: 'ERR_HSM_PIN_SOURCE',
    });
    await expect(readPin({ kind: 'file', path: dir })).rejects.toMatchObject({
      code: 'ERR_HSM_PIN_SOURCE',
      message: expect.stringContaining('not a regular file'),
    });
  });
});
