/**
 * The SPIFFE Workload API server: gRPC on a Unix socket. Callers are identified by the kernel
 * (SO_PEERCRED on the accepted socket), attested on every call and every stream through a
 * {@link WorkloadIdentityProvider}, and served only what their selectors entitle them to.
 *
 * How a call finds its connection's credentials: we accept connections on our own `net.Server`,
 * read SO_PEERCRED there, give the socket a connection tag as its `remoteAddress` (a Unix socket has
 * none of its own), and inject it into grpc-js. grpc-js reports `remoteAddress` through the public
 * `call.getPeer()`, so each call maps back to the credentials of the very socket it arrived on. The
 * tag is set by us on our own socket object; nothing the client sends can change it.
 *
 * @module
 */

import { chmod, lstat, mkdir, unlink } from 'node:fs/promises';
import { connect, createServer, type Server as NetServer, type Socket } from 'node:net';
import { dirname } from 'node:path';
import {
  type ConnectionInjector,
  type handleServerStreamingCall,
  type handleUnaryCall,
  type Metadata,
  Server,
  ServerCredentials,
  type ServerWritableStream,
  type ServiceDefinition,
  status as Status,
  type UntypedServiceImplementation,
} from '@grpc/grpc-js';
import {
  BundleSet,
  checkJwtSvidAudience,
  isSpiffeError,
  type SpiffeBundle,
  SpiffeId,
  validateJwtSvid,
} from '../spiffe/index.js';
import { EncodedResponses } from './encoded.js';
import { WorkloadApiError } from './errors.js';
import { peerCredentials } from './peercred.js';
import { PinnedProcess } from './procfs.js';
import {
  type EmptyMessage,
  type JWTBundlesResponseMessage,
  type JWTSVIDRequestMessage,
  type JWTSVIDResponseMessage,
  SECURITY_HEADER,
  SECURITY_HEADER_VALUE,
  toStruct,
  type ValidateJWTSVIDRequestMessage,
  type ValidateJWTSVIDResponseMessage,
  workloadServiceDefinition,
  type X509BundlesResponseMessage,
  type X509SVIDResponseMessage,
} from './proto.js';
import type {
  CallerCredentials,
  Selector,
  WorkloadIdentities,
  WorkloadIdentityProvider,
} from './provider.js';

/**
 * Where the agent serves the Workload API unless configured otherwise: a public directory of its
 * own (0755), apart from the server's admin socket directory (0750), so every workload can reach it.
 */
export const DEFAULT_SOCKET_PATH = '/run/ironroot-agent/public/api.sock';

/** Hints longer than this are not supported (Workload API §8). */
export const MAX_HINT_BYTES = 1024;

/** The structured logger the server writes to; pino's `Logger` fits. */
export interface WorkloadApiLogger {
  debug(fields: Record<string, unknown>, message: string): void;
  info(fields: Record<string, unknown>, message: string): void;
  warn(fields: Record<string, unknown>, message: string): void;
}

/** Options of {@link WorkloadApiServer.listen}. */
export interface WorkloadApiServerOptions {
  /** Where identities come from. */
  provider: WorkloadIdentityProvider;
  /** Unix socket path; default {@link DEFAULT_SOCKET_PATH}. */
  socketPath?: string;
  /** Where /proc is, for process start times; default `/proc`. */
  procRoot?: string;
  /** Default: discard. */
  logger?: WorkloadApiLogger;
  /** Told once per call how it ended (for metrics); what it throws is logged, never reaches the caller. */
  onCall?: (call: WorkloadApiCall) => void;
}

/**
 * One call's outcome, as {@link WorkloadApiServerOptions.onCall} hears it. A stream counts once:
 * `OK` when its first message is sent, or the status it was refused or cancelled with before that.
 */
export interface WorkloadApiCall {
  /** The RPC's name, e.g. `FetchX509SVID`. */
  readonly rpc: string;
  /** The gRPC status name, e.g. `OK`, `PERMISSION_DENIED`. */
  readonly status: string;
}

interface Connection {
  readonly credentials: CallerCredentials;
  /** The connecting process, pinned when the connection was accepted; undefined if it had gone. */
  readonly process: PinnedProcess | undefined;
}

/** A refusal with the gRPC status to answer. */
class Refusal extends Error {
  constructor(
    readonly status: Status,
    message: string,
  ) {
    super(message);
  }
}

interface Authorized {
  readonly credentials: CallerCredentials;
  readonly selectors: readonly Selector[];
  readonly identities: WorkloadIdentities;
}

const CONNECTION_TAG = 'ironroot-workload-api-connection:';
const silent: WorkloadApiLogger = { debug: () => {}, info: () => {}, warn: () => {} };

/**
 * A running Workload API server.
 *
 * @example
 * ```ts
 * const server = await WorkloadApiServer.listen({ provider, socketPath: '/run/ironroot-agent/public/api.sock' });
 * await server.close();
 * ```
 */
export class WorkloadApiServer {
  readonly socketPath: string;
  readonly #provider: WorkloadIdentityProvider;
  readonly #procRoot: string;
  readonly #logger: WorkloadApiLogger;
  readonly #onCall: (call: WorkloadApiCall) => void;
  readonly #connections = new Map<string, Connection>();
  readonly #sockets = new Set<Socket>();
  readonly #grpc = new Server();
  readonly #injector: ConnectionInjector;
  readonly #encoded = new EncodedResponses();
  readonly #net: NetServer;
  #nextConnection = 0;

  private constructor(options: WorkloadApiServerOptions) {
    this.socketPath = options.socketPath ?? DEFAULT_SOCKET_PATH;
    this.#provider = options.provider;
    this.#procRoot = options.procRoot ?? '/proc';
    this.#logger = options.logger ?? silent;
    this.#onCall = options.onCall ?? (() => {});
    this.#grpc.addService(serverDefinition(), this.#implementation());
    this.#injector = this.#grpc.createConnectionInjector(ServerCredentials.createInsecure());
    this.#net = createServer((socket) => {
      this.#accept(socket);
    });
  }

  /**
   * Starts serving on `options.socketPath`: creates the parent directory (0755) if missing, removes
   * a stale socket left by a previous run, and makes the socket 0777 (every workload may ask; what
   * it gets depends on who it is).
   *
   * @throws WorkloadApiError `ERR_WORKLOADAPI_SOCKET_NOT_SOCKET` when the path holds something else,
   *   `ERR_WORKLOADAPI_SOCKET_IN_USE` when another server answers on it.
   */
  static async listen(options: WorkloadApiServerOptions): Promise<WorkloadApiServer> {
    const server = new WorkloadApiServer(options);
    await prepareSocketPath(server.socketPath);
    await new Promise<void>((resolve, reject) => {
      server.#net.once('error', reject);
      server.#net.listen(server.socketPath, () => {
        server.#net.off('error', reject);
        resolve();
      });
    });
    await chmod(server.socketPath, 0o777);
    return server;
  }

  /** Stops accepting, ends every call and connection, and removes the socket. */
  async close(): Promise<void> {
    const closed = new Promise<void>((resolve) => this.#net.close(() => resolve()));
    this.#injector.destroy();
    this.#grpc.forceShutdown();
    for (const socket of this.#sockets) socket.destroy();
    // Closing the listener removes the socket file it bound (libuv does); a server that never bound
    // its path (refused at listen) never removes it.
    await closed;
  }

  #accept(socket: Socket): void {
    let credentials: CallerCredentials;
    try {
      credentials = peerCredentials(socket);
    } catch (e) {
      this.#logger.warn({ reason: (e as Error).message }, 'dropping Workload API connection');
      socket.destroy();
      return;
    }
    // Pinned as early as possible: the smaller the window between connect(2) and the pin, the less
    // room for the connecting process to exit and its pid to be reused before it is held.
    const pinned = PinnedProcess.open(this.#procRoot, credentials.pid);
    const tag = `${CONNECTION_TAG}${++this.#nextConnection}`;
    this.#sockets.add(socket);
    socket.once('close', () => {
      this.#connections.delete(tag);
      this.#sockets.delete(socket);
      pinned?.close();
    });
    this.#connections.set(tag, { credentials, process: pinned });
    Object.defineProperty(socket, 'remoteAddress', { value: tag, enumerable: true });
    this.#logger.debug(
      { ...credentials, connection: tag, start_time: pinned?.startTime },
      'workload connected',
    );
    this.#injector.injectConnection(socket);
  }

  /** Checks the header, attests the caller and re-checks its pid. */
  async #attestCaller(call: {
    readonly metadata: Metadata;
    getPeer(): string;
  }): Promise<{ credentials: CallerCredentials; selectors: readonly Selector[] }> {
    checkSecurityHeader(call.metadata);
    const connection = this.#connections.get(call.getPeer());
    if (connection === undefined) {
      throw new Refusal(Status.UNAVAILABLE, 'connection is closing; reconnect');
    }
    const { credentials } = connection;
    if (credentials.pid <= 0) {
      throw new Refusal(
        Status.PERMISSION_DENIED,
        "the caller's process is not visible in the agent's PID namespace; run the agent in the host PID namespace",
      );
    }
    let selectors: readonly Selector[];
    try {
      selectors = await this.#provider.attest(credentials);
    } catch (e) {
      this.#logger.warn(
        { pid: credentials.pid, uid: credentials.uid, reason: (e as Error).message },
        'workload attestation failed',
      );
      throw new Refusal(Status.PERMISSION_DENIED, 'could not attest the calling process');
    }
    // The attestors read /proc/<pid>; if the process that connected has exited and its pid now
    // names another process, they described the wrong process. A read through the pin after theirs
    // tells them apart (see PinnedProcess).
    if (connection.process === undefined || !connection.process.isSame()) {
      this.#logger.warn({ pid: credentials.pid, uid: credentials.uid }, 'caller pid was reused');
      throw new Refusal(
        Status.PERMISSION_DENIED,
        'the process that opened this connection has exited (its pid may now name another process); reconnect from the live process',
      );
    }
    return { credentials, selectors };
  }

  /** {@link #attestCaller}, then the caller's identities; refused when it has none. */
  async #authorize(call: { readonly metadata: Metadata; getPeer(): string }): Promise<Authorized> {
    const { credentials, selectors } = await this.#attestCaller(call);
    const identities = this.#provider.identities(selectors);
    if (identities.svids.length === 0) {
      // Kinds left uncomputed are named: an operator reading the selectors must not take them for absent.
      const notComputed = this.#provider.notComputed?.(selectors) ?? [];
      this.#logger.info(
        {
          pid: credentials.pid,
          uid: credentials.uid,
          selectors,
          ...(notComputed.length > 0 ? { selectors_not_computed: notComputed } : {}),
        },
        'no identity for caller',
      );
      throw new Refusal(Status.PERMISSION_DENIED, 'no identity issued');
    }
    return { credentials, selectors, identities };
  }

  #implementation(): UntypedServiceImplementation {
    const FetchX509SVID: handleServerStreamingCall<EmptyMessage, Buffer> = (call) =>
      this.#stream(call, 'FetchX509SVID', (i) => [i.svids, [i.bundle], i.federatedBundles], x509SvidResponse);
    const FetchX509Bundles: handleServerStreamingCall<EmptyMessage, Buffer> = (call) =>
      this.#stream(call, 'FetchX509Bundles', (i) => [[i.bundle], i.federatedBundles], x509BundlesResponse);
    const FetchJWTBundles: handleServerStreamingCall<EmptyMessage, Buffer> = (call) =>
      this.#stream(call, 'FetchJWTBundles', (i) => [[i.bundle], i.federatedBundles], jwtBundlesResponse);
    const FetchJWTSVID: handleUnaryCall<JWTSVIDRequestMessage, JWTSVIDResponseMessage> = (call, callback) => {
      this.#unary(
        'FetchJWTSVID',
        this.#fetchJwtSvid(call.request, () => this.#authorize(call)),
        callback,
      );
    };
    const ValidateJWTSVID: handleUnaryCall<ValidateJWTSVIDRequestMessage, ValidateJWTSVIDResponseMessage> = (
      call,
      callback,
    ) => {
      this.#unary(
        'ValidateJWTSVID',
        this.#validateJwtSvid(call.request, () => this.#authorize(call)),
        callback,
      );
    };
    const unimplemented =
      (rpc: string): handleServerStreamingCall<unknown, unknown> =>
      (call) => {
        let error: { code: Status; details: string };
        try {
          // Every request needs the header (Workload Endpoint §3), even one about to be refused.
          checkSecurityHeader(call.metadata);
          error = {
            code: Status.UNIMPLEMENTED,
            details: 'the WIT-SVID profile is not implemented by this server',
          };
        } catch (e) {
          error = this.#toStatus(e);
        }
        this.#report(rpc, error.code);
        call.emit('error', error);
      };
    return {
      FetchX509SVID,
      FetchX509Bundles,
      FetchJWTSVID,
      FetchJWTBundles,
      ValidateJWTSVID,
      FetchWITSVID: unimplemented('FetchWITSVID'),
      FetchWITBundles: unimplemented('FetchWITBundles'),
    };
  }

  /**
   * Serves a stream: the full state at once, then again after every provider change that alters
   * it; ends with PermissionDenied when the caller's identities drop to none. `inputs` names the
   * objects of the snapshot `render` reads, in order: streams with the same objects share one
   * encoding of the response (see EncodedResponses).
   */
  #stream(
    call: ServerWritableStream<EmptyMessage, Buffer>,
    method: string,
    inputs: (identities: WorkloadIdentities) => readonly (readonly object[])[],
    render: (identities: WorkloadIdentities) => unknown,
  ): void {
    const definition = workloadServiceDefinition()[method];
    if (definition === undefined) throw new TypeError(`no method ${method} in the Workload API proto`);
    const encode = (identities: WorkloadIdentities): Buffer => {
      const parts = inputs(identities);
      return this.#encoded.get(`${method}:${parts.map((p) => p.length).join(':')}`, parts.flat(), () =>
        definition.responseSerialize(render(identities)),
      );
    };
    let unsubscribe: (() => void) | undefined;
    let ended = false;
    let reported = false;
    const report = (code: Status) => {
      if (reported) return;
      reported = true;
      this.#report(method, code);
    };
    const end = (e?: unknown) => {
      if (ended) return;
      ended = true;
      unsubscribe?.();
      if (e === undefined) {
        // Only a cancelled call ends without an error before its first message.
        report(Status.CANCELLED);
        call.end();
      } else {
        const error = this.#toStatus(e);
        report(error.code);
        call.emit('error', error);
      }
    };
    call.on('cancelled', () => end());
    this.#authorize(call).then(
      (authorized) => {
        if (ended) return;
        let selectors = authorized.selectors;
        let attesting = false;
        let last: Buffer | undefined;
        const update = () => {
          if (ended || attesting) return;
          if (this.#provider.attestAgain?.(selectors)) {
            // An entry now uses a selector kind these selectors were attested without: attest the
            // caller again (the pid check included) before matching; this update follows then.
            attesting = true;
            this.#attestCaller(call).then(
              (fresh) => {
                attesting = false;
                selectors = fresh.selectors;
                update();
              },
              (e: unknown) => end(e),
            );
            return;
          }
          let bytes: Buffer;
          try {
            const identities = this.#provider.identities(selectors);
            if (identities.svids.length === 0) {
              end(new Refusal(Status.PERMISSION_DENIED, 'no identity issued'));
              return;
            }
            // The bytes both tell a change and are what is sent (see serverDefinition).
            bytes = encode(identities);
          } catch (e) {
            // Runs inside the provider's notification: a failure ends this stream, not the provider.
            end(e);
            return;
          }
          // Equal content is not a change; the stream stays quiet (W-7). Shared bytes are compared
          // by reference first; new objects with the same content still compare equal.
          if (bytes === last || last?.equals(bytes)) return;
          last = bytes;
          call.write(bytes);
          report(Status.OK);
        };
        unsubscribe = this.#provider.subscribe(update);
        // Read again now that we are subscribed: a change between attestation and subscription
        // would otherwise never reach this stream.
        update();
      },
      (e: unknown) => end(e),
    );
  }

  async #fetchJwtSvid(
    request: JWTSVIDRequestMessage,
    authorize: () => Promise<Authorized>,
  ): Promise<JWTSVIDResponseMessage> {
    const { identities } = await authorize();
    if (request.audience.length === 0 || request.audience.some((a) => a === '')) {
      throw new Refusal(Status.INVALID_ARGUMENT, 'audience must be specified');
    }
    try {
      checkJwtSvidAudience(request.audience);
    } catch (e) {
      if (!isSpiffeError(e)) throw e;
      throw new Refusal(Status.INVALID_ARGUMENT, `${e.code}: ${e.message}`);
    }
    let wanted: SpiffeId | undefined;
    if (request.spiffe_id !== '') {
      try {
        wanted = SpiffeId.parse(request.spiffe_id);
      } catch (e) {
        throw new Refusal(Status.INVALID_ARGUMENT, `spiffe_id: ${(e as Error).message}`);
      }
    }
    const svids = withUniqueHints(identities.svids).filter(
      (s) => wanted === undefined || s.spiffeId.equals(wanted),
    );
    if (svids.length === 0) {
      throw new Refusal(Status.PERMISSION_DENIED, `no identity issued for ${request.spiffe_id}`);
    }
    const tokens = await Promise.all(
      svids.map((s) => this.#provider.mintJwtSvid(s.spiffeId, request.audience)),
    );
    return {
      svids: svids.map((s, i) => ({
        spiffe_id: s.spiffeId.toString(),
        svid: tokens[i] ?? '',
        hint: s.hint ?? '',
      })),
    };
  }

  async #validateJwtSvid(
    request: ValidateJWTSVIDRequestMessage,
    authorize: () => Promise<Authorized>,
  ): Promise<ValidateJWTSVIDResponseMessage> {
    const { identities } = await authorize();
    if (request.audience === '') throw new Refusal(Status.INVALID_ARGUMENT, 'audience must be specified');
    if (request.svid === '') throw new Refusal(Status.INVALID_ARGUMENT, 'svid must be specified');
    const bundles = new BundleSet(
      [identities.bundle, ...identities.federatedBundles].map((b) => b.toJwtBundle()),
    );
    try {
      const svid = await validateJwtSvid(request.svid, bundles, request.audience);
      return { spiffe_id: svid.id.toString(), claims: toStruct(svid.claims) };
    } catch (e) {
      if (!isSpiffeError(e)) throw e;
      throw new Refusal(Status.INVALID_ARGUMENT, `${e.code}: ${e.message}`);
    }
  }

  /** Answers a unary call with what `response` settles to, and reports how it ended. */
  #unary<T>(
    rpc: string,
    response: Promise<T>,
    callback: (error: { code: Status; details: string } | null, value?: T) => void,
  ): void {
    response.then(
      (value) => {
        this.#report(rpc, Status.OK);
        callback(null, value);
      },
      (e: unknown) => {
        const error = this.#toStatus(e);
        this.#report(rpc, error.code);
        callback(error);
      },
    );
  }

  #report(rpc: string, code: Status): void {
    try {
      this.#onCall({ rpc, status: Status[code] ?? String(code) });
    } catch (e) {
      // An observer's failure must never change what the caller gets.
      this.#logger.warn({ reason: (e as Error).message }, 'Workload API call observer failed');
    }
  }

  #toStatus(e: unknown): { code: Status; details: string } {
    if (e instanceof Refusal) return { code: e.status, details: e.message };
    this.#logger.warn({ reason: e instanceof Error ? e.message : String(e) }, 'Workload API call failed');
    return {
      code: Status.UNAVAILABLE,
      details: 'the agent could not serve this request; retry with backoff',
    };
  }
}

/**
 * The service as this server registers it: a stream serialises each response itself (it compares
 * the bytes with the last ones sent, and shares them with other streams), so a Buffer written to a
 * stream goes out as it is instead of being serialised a second time. No response message is a Buffer, so nothing else is mistaken for one.
 */
function serverDefinition(): ServiceDefinition {
  const methods: Record<string, ServiceDefinition[string]> = {};
  for (const [name, method] of Object.entries(workloadServiceDefinition())) {
    methods[name] = !method.responseStream
      ? method
      : {
          ...method,
          responseSerialize: (value: unknown) =>
            Buffer.isBuffer(value) ? value : method.responseSerialize(value),
        };
  }
  return methods;
}

/** @throws Refusal InvalidArgument unless the metadata holds `workload.spiffe.io: true` exactly once. */
function checkSecurityHeader(metadata: Metadata): void {
  const header = metadata.get(SECURITY_HEADER);
  if (header.length !== 1 || header[0] !== SECURITY_HEADER_VALUE) {
    throw new Refusal(Status.INVALID_ARGUMENT, 'security header missing from request');
  }
}

async function prepareSocketPath(path: string): Promise<void> {
  const dir = dirname(path);
  const created = await mkdir(dir, { recursive: true, mode: 0o755 });
  // mkdir applies the umask (systemd's UMask=0077 would make these 0700), yet workloads of every
  // user must reach the socket: the directories created here get 0755 exactly.
  if (created !== undefined)
    for (let each = dir; ; each = dirname(each)) {
      await chmod(each, 0o755);
      if (each === created || dirname(each) === each) break;
    }
  let isSocket: boolean;
  try {
    isSocket = (await lstat(path)).isSocket();
  } catch {
    return;
  }
  if (!isSocket) {
    throw new WorkloadApiError(
      'ERR_WORKLOADAPI_SOCKET_NOT_SOCKET',
      `${path} exists and is not a socket; remove it or choose another socket path`,
    );
  }
  if (await answers(path)) {
    throw new WorkloadApiError(
      'ERR_WORKLOADAPI_SOCKET_IN_USE',
      `another process is serving on ${path}; stop it or choose another socket path`,
    );
  }
  await unlink(path);
}

/** True when something accepts connections on the socket at `path` (so it is not stale). */
function answers(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const probe = connect(path);
    probe.once('connect', () => {
      probe.destroy();
      resolve(true);
    });
    probe.once('error', () => resolve(false));
  });
}

/** SVIDs in order, with a hint cleared when it repeats an earlier one or is too long (W-22, W-55). */
function withUniqueHints(svids: WorkloadIdentities['svids']): WorkloadIdentities['svids'] {
  const seen = new Set<string>();
  return svids.map((s) => {
    const hint = s.hint ?? '';
    if (hint === '') return s;
    if (seen.has(hint) || Buffer.byteLength(hint) > MAX_HINT_BYTES) return { ...s, hint: '' };
    seen.add(hint);
    return s;
  });
}

function concat(parts: readonly Uint8Array[]): Buffer {
  return Buffer.concat(parts.map((p) => Buffer.from(p.buffer, p.byteOffset, p.byteLength)));
}

function x509BundleDer(bundle: SpiffeBundle): Buffer {
  return concat(bundle.x509Authorities.map((c) => c.raw));
}

function x509SvidResponse(identities: WorkloadIdentities): X509SVIDResponseMessage {
  const bundles = new Map(
    [identities.bundle, ...identities.federatedBundles].map((b) => [b.trustDomain.name, b] as const),
  );
  const federated: Record<string, Buffer> = {};
  for (const b of identities.federatedBundles) federated[b.trustDomain.idString()] = x509BundleDer(b);
  return {
    svids: withUniqueHints(identities.svids).map((s) => ({
      spiffe_id: s.spiffeId.toString(),
      x509_svid: concat(s.chainDer),
      x509_svid_key: Buffer.from(s.keyPkcs8Der),
      // The bundle of the SVID's own trust domain (W-21).
      bundle: x509BundleDer(bundles.get(s.spiffeId.trustDomain.name) ?? identities.bundle),
      hint: s.hint ?? '',
    })),
    crl: [],
    federated_bundles: federated,
  };
}

function x509BundlesResponse(identities: WorkloadIdentities): X509BundlesResponseMessage {
  const bundles: Record<string, Buffer> = {};
  for (const b of [identities.bundle, ...identities.federatedBundles]) {
    bundles[b.trustDomain.idString()] = x509BundleDer(b);
  }
  return { crl: [], bundles };
}

function jwtBundlesResponse(identities: WorkloadIdentities): JWTBundlesResponseMessage {
  const bundles: Record<string, Buffer> = {};
  for (const b of [identities.bundle, ...identities.federatedBundles]) {
    // toJwtBundle keeps only the jwt-svid keys: no X.509 authorities in this response (W-41).
    bundles[b.trustDomain.idString()] = Buffer.from(b.toJwtBundle().marshal());
  }
  return { bundles };
}
