import { readFile } from 'node:fs/promises';
import { describe, expect, it } from 'vitest';
import { readEventLog, TpmError, unwrapCertificate } from '../../src/tpm/index.js';
import { fixturePath } from '../helpers/fixtures.js';

describe('readEventLog', () => {
  it('returns the bytes of the log at a given path', async () => {
    const path = fixturePath('eventlogs', 'keylime', 'binary_bios_measurements');
    const bytes = await readEventLog(path);
    expect(Buffer.from(bytes).equals(await readFile(path))).toBe(true);
    expect(bytes.byteLength).toBeGreaterThan(0);
  });

  it('fails with ERR_TPM_EVENTLOG_UNREADABLE naming the path when there is no log', async () => {
    const error = await readEventLog('/nonexistent/binary_bios_measurements').catch((e: unknown) => e);
    expect(error).toBeInstanceOf(TpmError);
    expect((error as TpmError).code).toBe('ERR_TPM_EVENTLOG_UNREADABLE');
    expect((error as TpmError).message).toContain('/nonexistent/binary_bios_measurements');
  });
});

describe('unwrapCertificate', () => {
  const der = Uint8Array.of(0x30, 0x03, 0x02, 0x01, 0x05);

  it('strips the PC Client NV header and trailing padding', () => {
    expect(unwrapCertificate(Uint8Array.of(0x10, 0x01, 0x00, 0x00, 0x05, ...der))).toEqual(der);
    expect(unwrapCertificate(Uint8Array.of(...der, 0xff, 0xff, 0x00))).toEqual(der);
  });

  it('rejects NV contents that are not a DER SEQUENCE or are cut short', () => {
    expect(() => unwrapCertificate(Uint8Array.of(0xff, 0xff))).toThrow(/DER SEQUENCE/);
    expect(() => unwrapCertificate(der.subarray(0, 4))).toThrow(/shorter than its DER length/);
  });
});
