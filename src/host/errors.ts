/**
 * Errors of the host facilities both executables share. Each names the configuration key the
 * operator must change, so the message can say what to do next.
 *
 * @module
 */
export type HostErrorCode =
  /** Something accepts connections on the socket path: another process serves it. */
  | 'ERR_SOCKET_IN_USE'
  /** The socket path holds a file that is not a socket. */
  | 'ERR_SOCKET_NOT_SOCKET'
  /** The socket path cannot be probed (e.g. permission denied). */
  | 'ERR_SOCKET_UNUSABLE'
  /** Another process holds the data directory's lock. */
  | 'ERR_DATA_DIR_LOCKED'
  /** A directory cannot be created or written (data_dir, a socket's directory). */
  | 'ERR_DIR_UNUSABLE'
  /** A TCP address is taken by another process. */
  | 'ERR_ADDRESS_IN_USE'
  /** A TCP address cannot be bound (not a local address, privileged port …). */
  | 'ERR_ADDRESS_UNAVAILABLE';

export class HostError extends Error {
  readonly code: HostErrorCode;
  /** The configuration key whose value is at fault, e.g. `admin_socket`. */
  readonly key: string;

  constructor(code: HostErrorCode, key: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.key = key;
    this.name = 'HostError';
  }
}
