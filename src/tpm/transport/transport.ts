/**
 * How command bytes reach a TPM. Everything above this interface is plain TypeScript.
 *
 * @module
 */

export interface TpmTransport {
  /** What this transport talks to, for logs and messages (`swtpm:host=…`, `/dev/tpmrm0`). */
  readonly description: string;
  /**
   * Sends one marshalled command and resolves with the whole response. Rejects with
   * `ERR_TPM_TIMEOUT` when no response arrives within `timeoutMs`, `ERR_TPM_TRANSPORT` on I/O
   * failure. Calls must not overlap; `Tpm` serialises them.
   */
  send(command: Uint8Array, timeoutMs: number): Promise<Uint8Array>;
  /** Releases the connection. Further `send` calls reject with `ERR_TPM_CLOSED`. */
  close(): Promise<void>;
}

/** Largest response any TPM sends (TPM_PT_MAX_RESPONSE_SIZE is 4096 on PC Client TPMs). */
export const MAX_RESPONSE_SIZE = 8192;

/**
 * Rejects after `timeoutMs`, so a hung TPM or daemon becomes an error instead of a stuck agent.
 * The underlying call keeps running; the caller must treat the transport as broken afterwards.
 */
export async function withTimeout<T>(
  work: Promise<T>,
  timeoutMs: number,
  onTimeout: () => Error,
): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(onTimeout()), timeoutMs);
  });
  try {
    return await Promise.race([work, timeout]);
  } finally {
    clearTimeout(timer);
  }
}
