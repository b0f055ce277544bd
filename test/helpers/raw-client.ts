import { fileURLToPath } from 'node:url';
import { Client, credentials, Metadata, type ServiceError } from '@grpc/grpc-js';
import { loadSync, type MethodDefinition } from '@grpc/proto-loader';

const PROTO = fileURLToPath(new URL('../../proto/workload.proto', import.meta.url));
const definition = loadSync(PROTO, {
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
});
const service = definition.SpiffeWorkloadAPI as Record<string, MethodDefinition<object, object>>;

/** Every RPC of the standard service, by name. */
export type RpcName =
  | 'FetchX509SVID'
  | 'FetchX509Bundles'
  | 'FetchJWTSVID'
  | 'FetchJWTBundles'
  | 'ValidateJWTSVID'
  | 'FetchWITSVID'
  | 'FetchWITBundles';

function method(name: RpcName): MethodDefinition<object, object> {
  const m = service[name];
  if (m === undefined) throw new Error(`proto has no ${name}`);
  return m;
}

/**
 * A Workload API client made of nothing but grpc-js and proto-loader over the standard proto — not
 * ironroot's client — so tests see exactly what any standard client sees.
 */
export class RawClient {
  readonly #client: Client;

  constructor(socketPath: string) {
    this.#client = new Client(`unix://${socketPath}`, credentials.createInsecure());
  }

  static header(present = true): Metadata {
    const md = new Metadata();
    if (present) md.set('workload.spiffe.io', 'true');
    return md;
  }

  unary<T>(name: RpcName, request: object, metadata = RawClient.header()): Promise<T> {
    const m = method(name);
    return new Promise((resolve, reject) => {
      this.#client.makeUnaryRequest(
        m.path,
        m.requestSerialize,
        m.responseDeserialize,
        request,
        metadata,
        (err, res) => {
          if (err) reject(err);
          else resolve(res as T);
        },
      );
    });
  }

  /** Opens a server stream; messages and the final status are collected as they come. */
  stream<T>(name: RpcName, metadata = RawClient.header(), request: object = {}): OpenStream<T> {
    const m = method(name);
    const call = this.#client.makeServerStreamRequest(
      m.path,
      m.requestSerialize,
      m.responseDeserialize,
      request,
      metadata,
    );
    return new OpenStream<T>(call);
  }

  close(): void {
    this.#client.close();
  }
}

export class OpenStream<T> {
  readonly messages: T[] = [];
  readonly ended: Promise<ServiceError>;
  readonly #waiters: Array<{ count: number; resolve: () => void }> = [];
  readonly #call: { cancel(): void };

  constructor(call: NodeJS.EventEmitter & { cancel(): void }) {
    this.#call = call;
    call.on('data', (m: T) => {
      this.messages.push(m);
      for (const w of [...this.#waiters]) {
        if (this.messages.length >= w.count) {
          this.#waiters.splice(this.#waiters.indexOf(w), 1);
          w.resolve();
        }
      }
    });
    this.ended = new Promise((resolve) => call.on('error', (e: ServiceError) => resolve(e)));
  }

  /** Resolves once `count` messages have arrived; rejects if the stream ends first. */
  async waitFor(count: number): Promise<T[]> {
    if (this.messages.length < count) {
      await Promise.race([
        new Promise<void>((resolve) => this.#waiters.push({ count, resolve })),
        this.ended.then((e) => {
          throw new Error(`stream ended with ${e.code} ${e.details} after ${this.messages.length} messages`);
        }),
      ]);
    }
    return this.messages.slice(0, count);
  }

  cancel(): void {
    this.#call.cancel();
  }
}
