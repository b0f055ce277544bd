/**
 * Errors of the Workload API server and client. Each carries a stable `code`; the client maps gRPC
 * statuses to codes so callers can `switch (err.code)` without knowing gRPC.
 *
 * @module
 */

/** Every stable code a {@link WorkloadApiError} can carry. */
export type WorkloadApiErrorCode =
  // Server start-up
  | 'ERR_WORKLOADAPI_SOCKET_NOT_SOCKET'
  | 'ERR_WORKLOADAPI_SOCKET_IN_USE'
  | 'ERR_WORKLOADAPI_PEERCRED'
  // Client: the gRPC status the server answered with
  | 'ERR_WORKLOADAPI_INVALID_ARGUMENT'
  | 'ERR_WORKLOADAPI_PERMISSION_DENIED'
  | 'ERR_WORKLOADAPI_UNAVAILABLE'
  | 'ERR_WORKLOADAPI_UNIMPLEMENTED'
  | 'ERR_WORKLOADAPI_CANCELLED'
  | 'ERR_WORKLOADAPI_RPC_FAILED'
  // Client: the server answered, but the answer breaks the standard
  | 'ERR_WORKLOADAPI_BAD_RESPONSE'
  // mTLS helpers
  | 'ERR_WORKLOADAPI_NO_SVID'
  | 'ERR_WORKLOADAPI_PEER_REJECTED';

/** The error class of `ironroot/workload-api`. */
export class WorkloadApiError extends Error {
  /** Stable identifier; never changes meaning. */
  readonly code: WorkloadApiErrorCode;
  /** The gRPC status code, when the error came from an RPC. */
  readonly grpcCode: number | undefined;

  constructor(code: WorkloadApiErrorCode, message: string, options?: { cause?: unknown; grpcCode?: number }) {
    super(message, options);
    this.name = 'WorkloadApiError';
    this.code = code;
    this.grpcCode = options?.grpcCode;
  }
}

/** True when `err` is a {@link WorkloadApiError}, optionally with the given code. */
export function isWorkloadApiError(err: unknown, code?: WorkloadApiErrorCode): err is WorkloadApiError {
  return err instanceof WorkloadApiError && (code === undefined || err.code === code);
}
