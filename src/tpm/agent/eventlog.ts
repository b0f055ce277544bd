/**
 * The firmware's measured-boot event log, as the kernel exposes it. Parsing is the event-log
 * module's job; the agent only ships the bytes.
 *
 * @module
 */
import { readFile } from 'node:fs/promises';
import { TpmError } from '../errors.js';

export const DEFAULT_EVENT_LOG_PATH = '/sys/kernel/security/tpm0/binary_bios_measurements';

export async function readEventLog(path: string = DEFAULT_EVENT_LOG_PATH): Promise<Uint8Array> {
  try {
    return new Uint8Array(await readFile(path));
  } catch (cause) {
    throw new TpmError(
      'ERR_TPM_EVENTLOG_UNREADABLE',
      `cannot read the event log at ${path} (securityfs mounted? running as root? a VM without a vTPM log has none)`,
      { cause },
    );
  }
}
