import { createServer, type Server } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  decodeRc,
  TPM_CC,
  Tpm,
  TpmError,
  TpmResponseError,
  type TpmTransport,
  TpmWriter,
} from '../../src/tpm/index.js';

describe('decodeRc', () => {
  it.each([
    [0x99d, 'TPM_RC_POLICY_FAIL', { kind: 'session', index: 1 }],
    [0xa9d, 'TPM_RC_POLICY_FAIL', { kind: 'session', index: 2 }],
    [0x9a2, 'TPM_RC_BAD_AUTH', { kind: 'session', index: 1 }],
    [0x98e, 'TPM_RC_AUTH_FAIL', { kind: 'session', index: 1 }],
    [0x1df, 'TPM_RC_INTEGRITY', { kind: 'parameter', index: 1 }],
    [0x2c4, 'TPM_RC_VALUE', { kind: 'parameter', index: 2 }],
    [0x18b, 'TPM_RC_HANDLE', { kind: 'handle', index: 1 }],
    [0x08b, 'TPM_RC_HANDLE', undefined],
  ])('decodes format-1 code 0x%s as %s at %o', (rc, name, location) => {
    const d = decodeRc(rc);
    expect(d.name).toBe(name);
    expect(d.location).toEqual(location);
    expect(d.isWarning).toBe(false);
  });

  it('decodes format-0 errors, warnings, vendor codes and tpm2-tss layer codes', () => {
    expect(decodeRc(0x101)).toMatchObject({ name: 'TPM_RC_FAILURE', isWarning: false, location: undefined });
    expect(decodeRc(0x100)).toMatchObject({ name: 'TPM_RC_INITIALIZE' });
    expect(decodeRc(0x902)).toMatchObject({ name: 'TPM_RC_OBJECT_MEMORY', isWarning: true });
    expect(decodeRc(0x902).description).toMatch(/flush transient handles/);
    expect(decodeRc(0x922)).toMatchObject({ name: 'TPM_RC_RETRY', isWarning: true });
    expect(decodeRc(0x500).name).toBe('vendor-defined response code 0x500');
    expect(decodeRc(0xa000a).name).toBe('TSS2_TCTI_RC_IO_ERROR');
  });
});

/** A transport that answers from a script: each entry is a response code, 0 meaning GetRandom's answer. */
function scriptedTransport(codes: number[]): TpmTransport & { sent: number } {
  const state = {
    sent: 0,
    description: 'script',
    async send() {
      const rc = codes[state.sent++] ?? 0;
      if (rc !== 0) return new TpmWriter().u16(0x8001).u32(10).u32(rc).finish();
      return new TpmWriter().u16(0x8001).u32(14).u32(0).tpm2b(Uint8Array.of(1, 2)).finish();
    },
    async close() {},
  };
  return state;
}

describe('retries', () => {
  it('resends after TPM_RC_RETRY and TPM_RC_TESTING, then succeeds', async () => {
    const transport = scriptedTransport([0x922, 0x90a, 0]);
    const tpm = new Tpm(transport, { retryDelaysMs: [0, 0, 0] });
    expect(await tpm.getRandom(2)).toEqual(Uint8Array.of(1, 2));
    expect(transport.sent).toBe(3);
  });

  it('gives up with the warning named once the retries are spent', async () => {
    const transport = scriptedTransport([0x922, 0x922, 0x922]);
    const tpm = new Tpm(transport, { retryDelaysMs: [0, 0] });
    await expect(tpm.getRandom(2)).rejects.toThrow(/TPM2_GetRandom failed: TPM_RC_RETRY/);
    expect(transport.sent).toBe(3);
  });

  it('does not resend errors that are not warnings', async () => {
    const transport = scriptedTransport([0x18b, 0]);
    const tpm = new Tpm(transport, { retryDelaysMs: [0, 0] });
    const error = await tpm.execute({ cc: TPM_CC.GetRandom }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(TpmResponseError);
    expect(transport.sent).toBe(1);
  });
});

describe('transport failures', () => {
  const silent: Server[] = [];
  let port = 0;

  beforeAll(async () => {
    // Accept connections and never answer, on a command port and the control port after it: a
    // hung simulator or daemon. (The mssim TCTI talks to both while opening.)
    for (let attempt = 0; attempt < 20 && silent.length < 2; attempt++) {
      for (const s of silent.splice(0)) s.close();
      const first = createServer(() => undefined);
      await new Promise<void>((resolve) => first.listen(0, '127.0.0.1', resolve));
      const address = first.address();
      port = address && typeof address === 'object' ? address.port : 0;
      silent.push(first);
      const second = createServer(() => undefined);
      const ok = await new Promise<boolean>((resolve) => {
        second.once('error', () => resolve(false));
        second.listen(port + 1, '127.0.0.1', () => resolve(true));
      });
      if (ok) silent.push(second);
    }
    expect(silent).toHaveLength(2);
  });

  afterAll(() => {
    for (const s of silent) s.close();
  });

  it('turns a simulator that never answers into ERR_TPM_TIMEOUT', async () => {
    const error = await Tpm.open(`mssim:host=127.0.0.1,port=${port}`, { timeoutMs: 300 }).catch(
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(TpmError);
    expect((error as TpmError).code).toBe('ERR_TPM_TIMEOUT');
    expect((error as TpmError).message).toContain(`mssim:host=127.0.0.1,port=${port}`);
  });

  it('fails with ERR_TPM_TRANSPORT and the TCTI named when nothing listens', async () => {
    const error = await Tpm.open('swtpm:host=127.0.0.1,port=1').catch((e: unknown) => e);
    expect(error).toBeInstanceOf(TpmError);
    expect((error as TpmError).code).toBe('ERR_TPM_TRANSPORT');
    expect((error as TpmError).message).toContain('swtpm:host=127.0.0.1,port=1');
  });

  it('fails with ERR_TPM_TRANSPORT for a device that does not exist, via the direct path', async () => {
    const error = await Tpm.open('direct:/dev/no-such-tpm').catch((e: unknown) => e);
    expect(error).toBeInstanceOf(TpmError);
    expect((error as TpmError).code).toBe('ERR_TPM_TRANSPORT');
    expect((error as TpmError).message).toContain('/dev/no-such-tpm');
  });
});
