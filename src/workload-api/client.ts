/**
 * A SPIFFE Workload API client for Node: fetch and watch X.509-SVIDs and bundles, fetch and
 * validate JWT-SVIDs. It speaks only the standard protocol, so it is not tied to ironroot's server.
 *
 * @module
 */
import {
  Client,
  type ClientReadableStream,
  credentials,
  Metadata,
  type ServiceError,
  status,
} from '@grpc/grpc-js';
import { loadSync, type MethodDefinition } from '@grpc/proto-loader';
import {
  BundleSet,
  type EndpointAddress,
  endpointAddressFromEnv,
  JwtBundle,
  type JwtSvid,
  parseEndpointAddress,
  parseJwtSvidInsecure,
  SpiffeId,
  TrustDomain,
  X509Bundle,
  X509Svid,
} from '../spiffe/index.js';
import { WorkloadApiError, type WorkloadApiErrorCode } from './errors.js';
import {
  fromStruct,
  type JWTBundlesResponseMessage,
  type JWTSVIDResponseMessage,
  LOADER_OPTIONS,
  SECURITY_HEADER,
  SECURITY_HEADER_VALUE,
  type ValidateJWTSVIDResponseMessage,
  WORKLOAD_PROTO_PATH,
  type X509BundlesResponseMessage,
  type X509SVIDResponseMessage,
} from './proto.js';

/** An X.509-SVID as delivered, with its hint (empty when none). */
export interface FetchedX509Svid {
  readonly svid: X509Svid;
  readonly hint: string;
}

/** Everything a FetchX509SVID message carries, parsed. */
export interface X509Context {
  /** The caller's SVIDs, default identity first; later repeats of a non-empty hint are dropped. */
  readonly svids: readonly FetchedX509Svid[];
  /** X.509 bundles of the SVIDs' own trust domains and of the federated trust domains. */
  readonly bundles: BundleSet;
}

/** A JWT-SVID as delivered, with its hint. */
export interface FetchedJwtSvid {
  readonly svid: JwtSvid;
  readonly hint: string;
}

/** What ValidateJWTSVID answered. */
export interface ValidatedJwtSvid {
  readonly spiffeId: SpiffeId;
  readonly claims: Record<string, unknown>;
}

/** Receives the updates of {@link WorkloadApiClient.watchX509Context}. */
export interface X509ContextWatcher {
  /** Each complete new state. */
  onUpdate(context: X509Context): void;
  /** An error the watch recovers from by reconnecting (PermissionDenied, Unavailable, …). */
  onError?(error: WorkloadApiError): void;
}

/** Reconnect backoff of watches. */
export interface Backoff {
  /** First delay; default 100 ms. */
  initialMs: number;
  /** Longest delay; default 30 s. */
  maxMs: number;
}

/** Options of {@link WorkloadApiClient}. */
export interface WorkloadApiClientOptions {
  /** `unix:///path` or `tcp://ip:port`; default: `SPIFFE_ENDPOINT_SOCKET` from `env`. */
  address?: string;
  /** Where `SPIFFE_ENDPOINT_SOCKET` is looked up; default `process.env`. */
  env?: Readonly<Record<string, string | undefined>>;
  /** Reconnect backoff of watches. */
  backoff?: Partial<Backoff>;
}

type Methods = Record<string, MethodDefinition<object, object>>;
let methods: Methods | undefined;

function method(name: string): MethodDefinition<object, object> {
  methods ??= loadSync(WORKLOAD_PROTO_PATH, LOADER_OPTIONS).SpiffeWorkloadAPI as Methods;
  const m = methods[name];
  if (m === undefined) throw new TypeError(`no method ${name} in the Workload API proto`);
  return m;
}

const CODES: Partial<Record<number, WorkloadApiErrorCode>> = {
  [status.INVALID_ARGUMENT]: 'ERR_WORKLOADAPI_INVALID_ARGUMENT',
  [status.PERMISSION_DENIED]: 'ERR_WORKLOADAPI_PERMISSION_DENIED',
  [status.UNAVAILABLE]: 'ERR_WORKLOADAPI_UNAVAILABLE',
  [status.UNIMPLEMENTED]: 'ERR_WORKLOADAPI_UNIMPLEMENTED',
  [status.CANCELLED]: 'ERR_WORKLOADAPI_CANCELLED',
};

const ADVICE: Partial<Record<WorkloadApiErrorCode, string>> = {
  ERR_WORKLOADAPI_PERMISSION_DENIED:
    'the agent has no identity for this process; check the registration entries for its selectors',
  ERR_WORKLOADAPI_UNAVAILABLE: 'is the agent running and serving this address?',
};

function isServiceError(e: unknown): e is ServiceError {
  return e instanceof Error && typeof (e as Partial<ServiceError>).code === 'number';
}

function rpcError(rpc: string, address: string, e: unknown): WorkloadApiError {
  if (!isServiceError(e)) {
    return new WorkloadApiError('ERR_WORKLOADAPI_RPC_FAILED', `${rpc} at ${address}: ${String(e)}`, {
      cause: e,
    });
  }
  const code = CODES[e.code] ?? 'ERR_WORKLOADAPI_RPC_FAILED';
  const advice = ADVICE[code];
  return new WorkloadApiError(
    code,
    `${rpc} at ${address}: ${e.details}${advice === undefined ? '' : ` (${advice})`}`,
    { cause: e, grpcCode: e.code },
  );
}

function badResponse(message: string): WorkloadApiError {
  return new WorkloadApiError(
    'ERR_WORKLOADAPI_BAD_RESPONSE',
    `Workload API response breaks the standard: ${message}`,
  );
}

/** A bundle map key: the standard says `spiffe://<td>`; go-spiffe's fake server writes bare names. */
function trustDomainOfKey(key: string): TrustDomain {
  return TrustDomain.parse(key.startsWith('spiffe://') ? key.slice('spiffe://'.length) : key);
}

/** Parses a FetchX509SVID message, enforcing the mandatory fields (W-13) and first-hint-wins (W-23). */
export function parseX509SvidResponse(message: X509SVIDResponseMessage): X509Context {
  if (message.svids.length === 0) throw badResponse('FetchX509SVID response has no SVIDs');
  const bundles = new BundleSet();
  for (const [key, der] of Object.entries(message.federated_bundles)) {
    const td = trustDomainOfKey(key);
    bundles.set(X509Bundle.parseDer(td, der));
  }
  const seen = new Set<string>();
  const svids: FetchedX509Svid[] = [];
  for (const s of message.svids) {
    if (
      s.spiffe_id === '' ||
      s.x509_svid.length === 0 ||
      s.x509_svid_key.length === 0 ||
      s.bundle.length === 0
    ) {
      throw badResponse('an X509SVID lacks spiffe_id, x509_svid, x509_svid_key or bundle');
    }
    const svid = X509Svid.parseDer(s.x509_svid, s.x509_svid_key);
    if (svid.id.toString() !== s.spiffe_id) {
      throw badResponse(`spiffe_id ${s.spiffe_id} is not the ID in its certificate (${svid.id})`);
    }
    // The SVID's own trust-domain bundle wins over a federated one of the same name.
    bundles.set(X509Bundle.parseDer(svid.id.trustDomain, s.bundle));
    if (s.hint !== '') {
      if (seen.has(s.hint)) continue;
      seen.add(s.hint);
    }
    svids.push({ svid, hint: s.hint });
  }
  return { svids, bundles };
}

/**
 * A Workload API client. Every call carries the `workload.spiffe.io: true` header.
 *
 * @example
 * ```ts
 * const client = new WorkloadApiClient({ address: 'unix:///run/ironroot-agent/public/api.sock' });
 * const { svids, bundles } = await client.fetchX509Context();
 * client.close();
 * ```
 */
export class WorkloadApiClient {
  /** The address in use, as given or from `SPIFFE_ENDPOINT_SOCKET`. */
  readonly address: string;
  readonly #client: Client;
  readonly #backoff: Backoff;

  /** @throws SpiffeError `ERR_ENDPOINT_*` for a missing or malformed address. */
  constructor(options: WorkloadApiClientOptions = {}) {
    const parsed: EndpointAddress =
      options.address === undefined
        ? endpointAddressFromEnv(options.env ?? process.env)
        : parseEndpointAddress(options.address);
    this.address = parsed.scheme === 'unix' ? `unix://${parsed.path}` : `tcp://${parsed.host}:${parsed.port}`;
    const target =
      parsed.scheme === 'unix'
        ? `unix://${parsed.path}`
        : parsed.host.includes(':')
          ? `ipv6:[${parsed.host}]:${parsed.port}`
          : `ipv4:${parsed.host}:${parsed.port}`;
    // Plaintext: the Workload API authenticates callers out of band, never with TLS (E-9, E-14).
    this.#client = new Client(target, credentials.createInsecure());
    this.#backoff = { initialMs: 100, maxMs: 30_000, ...options.backoff };
  }

  /** The first FetchX509SVID message: the caller's SVIDs and bundles. */
  async fetchX509Context(options: { signal?: AbortSignal } = {}): Promise<X509Context> {
    return parseX509SvidResponse(await this.#first<X509SVIDResponseMessage>('FetchX509SVID', options.signal));
  }

  /** The first FetchX509Bundles message: X.509 bundles by trust domain. */
  async fetchX509Bundles(options: { signal?: AbortSignal } = {}): Promise<BundleSet> {
    const message = await this.#first<X509BundlesResponseMessage>('FetchX509Bundles', options.signal);
    const set = new BundleSet();
    for (const [key, der] of Object.entries(message.bundles))
      set.set(X509Bundle.parseDer(trustDomainOfKey(key), der));
    return set;
  }

  /** The first FetchJWTBundles message: JWT bundles by trust domain. */
  async fetchJwtBundles(options: { signal?: AbortSignal } = {}): Promise<BundleSet> {
    const message = await this.#first<JWTBundlesResponseMessage>('FetchJWTBundles', options.signal);
    const set = new BundleSet();
    for (const [key, jwks] of Object.entries(message.bundles))
      set.set(JwtBundle.parse(trustDomainOfKey(key), jwks));
    return set;
  }

  /**
   * JWT-SVIDs for `audience`: one per identity, or only `spiffeId`'s. Tokens are parsed, not
   * validated: they come straight from the agent, which signed them for this caller.
   */
  async fetchJwtSvids(request: {
    audience: readonly string[];
    spiffeId?: SpiffeId | string;
  }): Promise<FetchedJwtSvid[]> {
    const response = await this.#unary<JWTSVIDResponseMessage>('FetchJWTSVID', {
      audience: [...request.audience],
      spiffe_id: request.spiffeId === undefined ? '' : request.spiffeId.toString(),
    });
    if (response.svids.length === 0) throw badResponse('FetchJWTSVID response has no SVIDs');
    const seen = new Set<string>();
    const out: FetchedJwtSvid[] = [];
    for (const s of response.svids) {
      if (s.spiffe_id === '' || s.svid === '') throw badResponse('a JWTSVID lacks spiffe_id or svid');
      if (s.hint !== '') {
        if (seen.has(s.hint)) continue;
        seen.add(s.hint);
      }
      out.push({ svid: parseJwtSvidInsecure(s.svid), hint: s.hint });
    }
    return out;
  }

  /**
   * One JWT-SVID for `audience`: the default identity's (the first), or `spiffeId`'s when given.
   */
  async fetchJwtSvid(request: {
    audience: readonly string[];
    spiffeId?: SpiffeId | string;
  }): Promise<JwtSvid> {
    const [first] = await this.fetchJwtSvids(request);
    if (first === undefined) throw badResponse('FetchJWTSVID response has no SVIDs');
    return first.svid;
  }

  /** Asks the agent to validate `token` for `audience` (the way the standard prefers, W-48). */
  async validateJwtSvid(token: string, audience: string): Promise<ValidatedJwtSvid> {
    const response = await this.#unary<ValidateJWTSVIDResponseMessage>('ValidateJWTSVID', {
      audience,
      svid: token,
    });
    if (response.spiffe_id === '' || response.claims === null) {
      throw badResponse('ValidateJWTSVID response lacks spiffe_id or claims');
    }
    return { spiffeId: SpiffeId.parse(response.spiffe_id), claims: fromStruct(response.claims) };
  }

  /**
   * Watches FetchX509SVID until `signal` aborts: `onUpdate` gets every new state. On any error but
   * InvalidArgument it reconnects with exponential backoff (reset after a message), reporting the
   * error to `onError`; after PermissionDenied the previous SVIDs must no longer be used (W-25).
   * Resolves when aborted.
   *
   * @throws WorkloadApiError `ERR_WORKLOADAPI_INVALID_ARGUMENT`: a client bug, never retried (E-18).
   */
  async watchX509Context(watcher: X509ContextWatcher, signal: AbortSignal): Promise<void> {
    let delay = this.#backoff.initialMs;
    while (!signal.aborted) {
      const error = await new Promise<WorkloadApiError | undefined>((resolve) => {
        const call = this.#stream<X509SVIDResponseMessage>('FetchX509SVID');
        const abort = () => call.cancel();
        signal.addEventListener('abort', abort, { once: true });
        call.on('data', (message: X509SVIDResponseMessage) => {
          delay = this.#backoff.initialMs;
          let context: X509Context;
          try {
            context = parseX509SvidResponse(message);
          } catch (e) {
            // A malformed message is reported and discarded (W-13); the stream goes on.
            watcher.onError?.(e instanceof WorkloadApiError ? e : badResponse(String(e)));
            return;
          }
          watcher.onUpdate(context);
        });
        call.on('error', (e: unknown) => {
          signal.removeEventListener('abort', abort);
          resolve(signal.aborted ? undefined : rpcError('FetchX509SVID', this.address, e));
        });
        call.on('end', () => {
          signal.removeEventListener('abort', abort);
          resolve(undefined);
        });
      });
      if (signal.aborted) return;
      if (error?.code === 'ERR_WORKLOADAPI_INVALID_ARGUMENT') throw error;
      if (error !== undefined) watcher.onError?.(error);
      await sleep(delay, signal);
      delay = Math.min(delay * 2, this.#backoff.maxMs);
    }
  }

  /**
   * {@link watchX509Context} as an async iterator: yields every new state until `signal` aborts or
   * the loop breaks. Recoverable errors are retried silently (use the callback form to see them);
   * InvalidArgument is thrown from the iterator.
   *
   * @example
   * ```ts
   * for await (const context of client.x509Contexts(signal)) reload(context.svids[0]?.svid);
   * ```
   */
  async *x509Contexts(signal: AbortSignal): AsyncGenerator<X509Context, void, undefined> {
    const stop = new AbortController();
    const stopAll = () => stop.abort();
    signal.addEventListener('abort', stopAll, { once: true });
    // Only the newest state matters to a consumer that fell behind: keep one, not a backlog.
    let latest: X509Context | undefined;
    let failure: unknown;
    let finished = false;
    let wake: (() => void) | undefined;
    const notify = () => {
      wake?.();
      wake = undefined;
    };
    const watching = this.watchX509Context(
      {
        onUpdate: (context) => {
          latest = context;
          notify();
        },
      },
      stop.signal,
    ).then(
      () => {
        finished = true;
        notify();
      },
      (e: unknown) => {
        failure = e;
        finished = true;
        notify();
      },
    );
    try {
      for (;;) {
        if (latest !== undefined) {
          const context = latest;
          latest = undefined;
          yield context;
          continue;
        }
        if (failure !== undefined) throw failure;
        if (finished) return;
        await new Promise<void>((resolve) => {
          wake = resolve;
        });
      }
    } finally {
      signal.removeEventListener('abort', stopAll);
      stop.abort();
      await watching;
    }
  }

  /** Closes the channel; calls in flight fail with Cancelled. */
  close(): void {
    this.#client.close();
  }

  #metadata(): Metadata {
    const md = new Metadata();
    md.set(SECURITY_HEADER, SECURITY_HEADER_VALUE);
    return md;
  }

  #stream<T>(name: string): ClientReadableStream<T> {
    const m = method(name);
    return this.#client.makeServerStreamRequest(
      m.path,
      m.requestSerialize,
      m.responseDeserialize as (b: Buffer) => T,
      {},
      this.#metadata(),
    );
  }

  /** The first message of a stream, then the stream is cancelled. */
  #first<T>(name: string, signal: AbortSignal | undefined): Promise<T> {
    return new Promise((resolve, reject) => {
      const call = this.#stream<T>(name);
      let done = false;
      const abort = () => call.cancel();
      signal?.addEventListener('abort', abort, { once: true });
      call.on('data', (message: T) => {
        if (done) return;
        done = true;
        signal?.removeEventListener('abort', abort);
        resolve(message);
        call.cancel();
      });
      call.on('error', (e: unknown) => {
        if (done) return;
        done = true;
        signal?.removeEventListener('abort', abort);
        reject(rpcError(name, this.address, e));
      });
      call.on('end', () => {
        if (done) return;
        done = true;
        reject(badResponse(`${name} stream ended without a message`));
      });
    });
  }

  #unary<T>(name: string, request: object): Promise<T> {
    const m = method(name);
    return new Promise((resolve, reject) => {
      this.#client.makeUnaryRequest(
        m.path,
        m.requestSerialize,
        m.responseDeserialize as (b: Buffer) => T,
        request,
        this.#metadata(),
        (error, response) => {
          if (error !== null || response === undefined) reject(rpcError(name, this.address, error));
          else resolve(response);
        },
      );
    });
  }
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(done, ms);
    function done() {
      clearTimeout(timer);
      signal.removeEventListener('abort', done);
      resolve();
    }
    signal.addEventListener('abort', done, { once: true });
  });
}
