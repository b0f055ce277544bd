/**
 * Opening a TPM transport from a tpm2-tss TCTI configuration string.
 *
 * @module
 */
import { TpmError } from '../errors.js';
import { openDevice } from './device.js';
import { openTcti, tctiLoaderAvailable } from './tcti.js';
import type { TpmTransport } from './transport.js';

export { MAX_RESPONSE_SIZE, type TpmTransport } from './transport.js';

/** The TCTI used when nothing is configured: the kernel's resource-managed device. */
export const DEFAULT_TCTI = 'device:/dev/tpmrm0';

/** `TPM2TOOLS_TCTI` (as tpm2-tools read it) or the default. */
export function defaultTcti(env: NodeJS.ProcessEnv = process.env): string {
  return env.TPM2TOOLS_TCTI || DEFAULT_TCTI;
}

/**
 * Opens `conf` through tpm2-tss's TCTI loader. When that library is missing, `device:PATH` (or a
 * bare `/dev/…` path) falls back to direct file I/O on the device; other strings then fail with a
 * message saying what to install. `direct:PATH` forces the file I/O path.
 */
export async function openTransport(conf: string, timeoutMs = 30_000): Promise<TpmTransport> {
  const direct = /^direct:(.+)$/.exec(conf)?.[1];
  if (direct) return openDevice(direct);
  const devicePath = conf.startsWith('/dev/') ? conf : /^device:(.+)$/.exec(conf)?.[1];
  if (!tctiLoaderAvailable()) {
    if (devicePath) return openDevice(devicePath);
    throw new TpmError(
      'ERR_TPM_TRANSPORT',
      `TCTI "${conf}" needs libtss2-tctildr.so.0 (apt install libtss2-tctildr0); only device paths work without it`,
    );
  }
  return openTcti(devicePath && conf.startsWith('/dev/') ? `device:${devicePath}` : conf, timeoutMs);
}
