/**
 * A typed client for the admin API over its Unix socket, used by the CLI (and tests).
 *
 * @module
 */
import { type Client, credentials, type ServiceError, status } from '@grpc/grpc-js';
import type { AdminApi, DeepPartial, ServiceName } from './messages.js';
import { adminServices } from './proto.js';

/**
 * What went wrong on a call: the server's stable code (it sends `ERR_…: message` as the gRPC status
 * details), or one named here when the call failed before a handler answered; and the message.
 */
export class AdminCallError extends Error {
  readonly grpcCode: status;
  readonly errorCode: string;

  constructor(grpcCode: status, errorCode: string, message: string) {
    super(message);
    this.name = 'AdminCallError';
    this.grpcCode = grpcCode;
    this.errorCode = errorCode;
  }
}

const DEADLINE_MS = 30_000;

export class AdminClient {
  readonly #socketPath: string;
  readonly #clients = new Map<ServiceName, Client>();

  constructor(socketPath: string) {
    this.#socketPath = socketPath;
  }

  call<S extends ServiceName, M extends keyof AdminApi[S] & string>(
    service: S,
    method: M,
    request: AdminApi[S][M] extends [infer Q, unknown] ? DeepPartial<Q> : never,
    options: { deadlineMs?: number } = {},
  ): Promise<AdminApi[S][M] extends [unknown, infer R] ? R : never> {
    const client = this.#client(service);
    return new Promise((resolve, reject) => {
      const fn: unknown = Reflect.get(client, method);
      if (typeof fn !== 'function') {
        reject(new Error(`admin API has no method ${service}/${method}`));
        return;
      }
      fn.call(
        client,
        request,
        { deadline: Date.now() + (options.deadlineMs ?? DEADLINE_MS) },
        (error: ServiceError | null, response: AdminApi[S][M] extends [unknown, infer R] ? R : never) => {
          if (error) reject(this.#describe(error));
          else resolve(response);
        },
      );
    });
  }

  close(): void {
    for (const client of this.#clients.values()) client.close();
    this.#clients.clear();
  }

  #client(service: ServiceName): Client {
    const existing = this.#clients.get(service);
    if (existing) return existing;
    const Ctor = adminServices()[service];
    const client = new Ctor(`unix://${this.#socketPath}`, credentials.createInsecure());
    this.#clients.set(service, client);
    return client;
  }

  #describe(error: ServiceError): AdminCallError {
    const match = /^(ERR_[A-Z0-9_]+): ([\s\S]*)$/.exec(error.details);
    if (match?.[1] !== undefined && match[2] !== undefined)
      return new AdminCallError(error.code, match[1], match[2]);
    if (error.code === status.UNAVAILABLE) {
      return new AdminCallError(
        error.code,
        'ERR_UNAVAILABLE',
        `cannot reach the server's admin socket ${this.#socketPath} (${error.details}); is ironroot-server running, and may you open that socket?`,
      );
    }
    // The server's INTERNAL says only "see the server log": the code says as much.
    if (error.code === status.INTERNAL) return new AdminCallError(error.code, 'ERR_INTERNAL', error.details);
    return new AdminCallError(error.code, `ERR_GRPC_${status[error.code]}`, error.details);
  }
}
