/**
 * Direct character-device transport: write the command to /dev/tpmrm0 (or /dev/tpm0), read the
 * response. The kernel driver and its resource manager do framing and locality. Used when
 * libtss2-tctildr is not installed; it supports only local devices.
 *
 * @module
 */
import { open } from 'node:fs/promises';
import { TpmError } from '../errors.js';
import { MAX_RESPONSE_SIZE, type TpmTransport, withTimeout } from './transport.js';

export async function openDevice(path: string): Promise<TpmTransport> {
  let handle: Awaited<ReturnType<typeof open>>;
  try {
    handle = await open(path, 'r+');
  } catch (cause) {
    throw new TpmError(
      'ERR_TPM_TRANSPORT',
      `cannot open TPM device ${path} (does it exist, and is this user in the tss group?)`,
      { cause },
    );
  }
  let closed = false;
  let broken = false;
  return {
    description: path,
    async send(command, timeoutMs) {
      if (closed) throw new TpmError('ERR_TPM_CLOSED', `TPM device ${path} is closed`);
      if (broken) throw new TpmError('ERR_TPM_TRANSPORT', `TPM device ${path} is unusable after a timeout`);
      const work = (async () => {
        // The driver takes exactly one whole command per write and returns one whole response per
        // read, so no framing is needed here.
        await handle.write(command, 0, command.byteLength, null);
        const response = new Uint8Array(MAX_RESPONSE_SIZE);
        const { bytesRead } = await handle.read(response, 0, response.byteLength, null);
        return response.slice(0, bytesRead);
      })();
      try {
        return await withTimeout(work, timeoutMs, () => {
          broken = true;
          return new TpmError('ERR_TPM_TIMEOUT', `TPM device ${path} did not answer within ${timeoutMs} ms`);
        });
      } catch (error) {
        if (error instanceof TpmError) throw error;
        throw new TpmError('ERR_TPM_TRANSPORT', `I/O on TPM device ${path} failed`, { cause: error });
      }
    },
    async close() {
      if (closed) return;
      closed = true;
      await handle.close();
    },
  };
}
