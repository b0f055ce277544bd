/**
 * The admin API endpoint: gRPC on a Unix socket (0770), where the kernel tells us each caller's
 * uid (SO_PEERCRED) before any byte of gRPC is read.
 *
 * grpc-js cannot tell a handler which connection a call came on, so connections are sorted at
 * accept time instead: each allowed uid gets its own grpc Server (its handlers know the uid for
 * the audit log), and every other uid's connection goes to a Server whose every method answers
 * PERMISSION_DENIED. A refused caller thus reaches no handler at all, and still gets a clear error.
 *
 * @module
 */
import { chmodSync } from 'node:fs';
import { createServer, type Server as NetServer, type Socket } from 'node:net';
import {
  type ConnectionInjector,
  Server as GrpcServer,
  type handleUnaryCall,
  ServerCredentials,
  status,
  type UntypedServiceImplementation,
} from '@grpc/grpc-js';
import { claimSocketPath } from '../../host/index.js';
import { isHsmError } from '../../hsm/index.js';
import type { CaService } from '../ca/service.js';
import type { Actor } from '../datastore/datastore.js';
import { ServerError } from '../errors.js';
import type { Logger } from '../log.js';
import type { ProfileCatalog } from '../profiles/catalog.js';
import { checkLookupId } from '../registration/ids.js';
import type { RegistrationService } from '../registration/service.js';
import type { AdminApi, ServiceName } from './messages.js';
import { peerCredentials } from './peercred.js';
import { adminServices } from './proto.js';

type Handlers = {
  [S in ServiceName]: {
    [M in keyof AdminApi[S]]: (
      request: AdminApi[S][M] extends [infer Q, unknown] ? Q : never,
    ) => Promise<AdminApi[S][M] extends [unknown, infer R] ? R : never>;
  };
};

/** Runs one re-quote of a node now (continuous attestation); absent without TPM attestation. */
export type Reattest = (agentId: string) => Promise<{
  trusted: boolean;
  code: string;
  reason: string;
  durationMs: number;
}>;

function handlersFor(
  service: RegistrationService,
  ca: CaService,
  profiles: ProfileCatalog,
  actor: Actor,
  reattest: Reattest | undefined,
): Handlers {
  /** The agent a call names, by a valid ID (see checkLookupId); handlers using it are async, so it rejects. */
  const agent = <R extends { spiffe_id: string }>(request: R): R => {
    checkLookupId('spiffe_id', request.spiffe_id);
    return request;
  };
  return {
    EntryService: {
      BatchCreateEntry: (r) => service.batchCreateEntry(r, actor),
      GetEntry: (r) => service.getEntry(r),
      ListEntries: (r) => service.listEntries(r),
      CountEntries: (r) => service.countEntries(r),
      BatchUpdateEntry: (r) => service.batchUpdateEntry(r, actor),
      BatchDeleteEntry: (r) => service.batchDeleteEntry(r, actor),
    },
    AgentService: {
      ListAgents: (r) => service.listAgents(r),
      GetAgent: async (r) => service.getAgent(agent(r)),
      EvictAgent: async (r) => service.evictAgent(agent(r), actor),
      // A ban may name the agent by EK hash alone; banAgent checks that exactly one is given.
      BanAgent: async (r) => service.banAgent(r.spiffe_id === '' ? r : agent(r), actor),
      UnbanAgent: async (r) => service.unbanAgent(agent(r), actor),
      ReattestAgent: async (r) => {
        if (reattest === undefined)
          throw new ServerError(
            'ERR_INVALID_ARGUMENT',
            'this server has no tpm_attestation: no node is re-quoted; configure tpm_attestation first',
          );
        // Unknown IDs fail here, before anything waits.
        await service.getAgent(agent(r));
        const result = await reattest(r.spiffe_id);
        return {
          trusted: result.trusted,
          code: result.code,
          reason: result.reason,
          duration_ms: result.durationMs,
          agent: await service.getAgent(r),
        };
      },
      CreateJoinToken: (r) => service.createJoinToken(r, actor),
    },
    LocalAuthorityService: {
      ListAuthorities: (r) => ca.listAuthorities(r),
      Prepare: (r) => ca.prepare(r, actor),
      Activate: (r) => ca.activate(r, actor),
      Taint: (r) => ca.taint(r, actor),
      Revoke: (r) => ca.revoke(r, actor),
    },
    BundleService: {
      GetBundle: () => ca.getBundle(),
      ListFederatedBundles: () => ca.listFederatedBundles(),
      SetFederatedBundle: (r) => ca.setFederatedBundle(r, actor),
      DeleteFederatedBundle: (r) => ca.deleteFederatedBundle(r, actor),
    },
    SvidService: {
      MintX509Svid: (r) => ca.mintX509Svid(r),
      MintJwtSvid: (r) => ca.mintJwtSvid(r),
    },
    ProfileService: {
      ListProfiles: () => profiles.list(),
      GetProfile: (r) => profiles.get(r.name),
      GetNodeEventLog: async (r) => profiles.nodeEventLog(agent(r).spiffe_id),
    },
    FederationService: {
      ListFederationRelationships: () => service.federation.list(),
      GetFederationRelationship: (r) => service.federation.get(r),
      CreateFederationRelationship: (r) => service.federation.create(r, actor),
      UpdateFederationRelationship: (r) => service.federation.update(r, actor),
      DeleteFederationRelationship: (r) => service.federation.delete(r, actor),
    },
  };
}

export interface AdminServerOptions {
  socketPath: string;
  allowedUids: readonly number[];
  service: RegistrationService;
  ca: CaService;
  profiles: ProfileCatalog;
  logger: Logger;
  reattest?: Reattest;
  /** Told of every call's outcome, for metrics. */
  onCall?: (method: string, result: 'ok' | 'error' | 'denied') => void;
}

export class AdminServer {
  readonly #options: AdminServerOptions;
  readonly #byUid = new Map<number, { server: GrpcServer; injector: ConnectionInjector }>();
  readonly #sockets = new Set<Socket>();
  readonly #deniedByUid = new Map<number, { server: GrpcServer; injector: ConnectionInjector }>();
  #listener: NetServer | undefined;

  constructor(options: AdminServerOptions) {
    this.#options = options;
  }

  async start(): Promise<void> {
    const { socketPath, logger } = this.#options;
    // A live socket is refused here, before anything is bound; a stale one (its server was killed)
    // is removed.
    await claimSocketPath(socketPath, 'admin_socket');
    const listener = createServer((socket) => this.#accept(socket));
    this.#listener = listener;
    // The umask closes the window between bind() and chmod() in which the socket would be open to all.
    const previous = process.umask(0o007);
    try {
      await new Promise<void>((resolve, reject) => {
        listener.once('error', reject);
        listener.listen(socketPath, () => {
          listener.off('error', reject);
          resolve();
        });
      });
    } finally {
      process.umask(previous);
    }
    chmodSync(socketPath, 0o770);
    logger.info({ socket: socketPath, allowed_uids: this.#options.allowedUids }, 'admin API listening');
  }

  async stop(): Promise<void> {
    const listener = this.#listener;
    // close() stops accepting but waits for open connections, so those are destroyed first.
    const closed = listener
      ? new Promise<void>((resolve) => listener.close(() => resolve()))
      : Promise.resolve();
    for (const socket of this.#sockets) socket.destroy();
    await closed;
    for (const { server } of this.#byUid.values()) server.forceShutdown();
    for (const { server } of this.#deniedByUid.values()) server.forceShutdown();
    // Closing the listener removed the socket file it bound; a server that never bound the path
    // (refused at start) leaves it alone, as it may belong to a live server.
  }

  #accept(socket: Socket): void {
    const { logger, allowedUids } = this.#options;
    this.#sockets.add(socket);
    socket.once('close', () => this.#sockets.delete(socket));
    let uid: number;
    let pid: number;
    try {
      ({ uid, pid } = peerCredentials(socket));
    } catch (error) {
      logger.error({ err: error }, 'admin API: cannot read caller credentials; connection closed');
      socket.destroy();
      return;
    }
    if (!allowedUids.includes(uid)) {
      // peer_*: the caller's credentials; pino's own `pid` is this server's.
      logger.warn(
        { peer_uid: uid, peer_pid: pid, result: 'denied', reason: 'uid not in admin_allowed_uids' },
        'admin API caller refused',
      );
      this.#deniedServer(uid).injector.injectConnection(socket);
      return;
    }
    logger.debug({ peer_uid: uid, peer_pid: pid }, 'admin API connection');
    this.#serverFor(uid).injector.injectConnection(socket);
  }

  #serverFor(uid: number): { server: GrpcServer; injector: ConnectionInjector } {
    const existing = this.#byUid.get(uid);
    if (existing) return existing;
    const handlers = handlersFor(
      this.#options.service,
      this.#options.ca,
      this.#options.profiles,
      `uid:${uid}`,
      this.#options.reattest,
    );
    const server = new GrpcServer();
    const services = adminServices();
    for (const name of Object.keys(handlers) as ServiceName[]) {
      const implementation: UntypedServiceImplementation = {};
      for (const [method, handler] of Object.entries(handlers[name])) {
        implementation[method] = this.#unary(
          name,
          method,
          uid,
          handler as (request: unknown) => Promise<unknown>,
        );
      }
      server.addService(services[name].service, implementation);
    }
    const created = { server, injector: server.createConnectionInjector(ServerCredentials.createInsecure()) };
    this.#byUid.set(uid, created);
    return created;
  }

  #deniedServer(uid: number): { server: GrpcServer; injector: ConnectionInjector } {
    const existing = this.#deniedByUid.get(uid);
    if (existing) return existing;
    const server = new GrpcServer();
    const services = adminServices();
    const deny: handleUnaryCall<unknown, unknown> = (call, callback) => {
      // getPath() is /ironroot.admin.v1.Service/Method; metrics label calls as Service/Method.
      this.#options.onCall?.(call.getPath().replace(/^\/ironroot\.admin\.v1\./, ''), 'denied');
      callback({
        code: status.PERMISSION_DENIED,
        details: `ERR_PERMISSION_DENIED: uid ${uid} may not use the admin API; ask an operator to add it to admin_allowed_uids in the server config`,
      });
    };
    for (const name of Object.keys(services) as ServiceName[]) {
      const implementation: UntypedServiceImplementation = {};
      for (const method of Object.keys(services[name].service)) implementation[method] = deny;
      server.addService(services[name].service, implementation);
    }
    const created = { server, injector: server.createConnectionInjector(ServerCredentials.createInsecure()) };
    this.#deniedByUid.set(uid, created);
    return created;
  }

  #unary(
    serviceName: ServiceName,
    method: string,
    uid: number,
    handler: (request: unknown) => Promise<unknown>,
  ): handleUnaryCall<unknown, unknown> {
    const { logger } = this.#options;
    return (call, callback) => {
      const started = performance.now();
      handler(call.request).then(
        (response) => {
          logger.info(
            {
              method: `${serviceName}/${method}`,
              peer_uid: uid,
              result: 'ok',
              duration_ms: Math.round(performance.now() - started),
            },
            'admin API call',
          );
          this.#options.onCall?.(`${serviceName}/${method}`, 'ok');
          callback(null, response);
        },
        (error: unknown) => {
          const known = adminError(error);
          const fields = {
            method: `${serviceName}/${method}`,
            peer_uid: uid,
            result: 'error',
            duration_ms: Math.round(performance.now() - started),
            ...(known ? { error_code: known.code, reason: known.message } : { err: error }),
          };
          // An HSM fault is the operator's to fix, whoever called: logged as an error, code and all.
          if (known && !isHsmError(error)) logger.info(fields, 'admin API call');
          else logger.error(fields, known ? 'admin API call failed' : 'admin API call failed unexpectedly');
          this.#options.onCall?.(`${serviceName}/${method}`, 'error');
          callback({
            code: known ? known.grpcStatus : status.INTERNAL,
            details: known ? `${known.code}: ${known.message}` : 'internal error; see the server log',
          });
        },
      );
    };
  }
}

/**
 * What the caller is told of a failure: a ServerError as it is; an HSM fault by its code (an HSM
 * outage is ERR_HSM_UNAVAILABLE, not "internal error"). Anything else is undefined: an internal
 * error, detailed only in the log.
 */
function adminError(error: unknown): { code: string; message: string; grpcStatus: status } | undefined {
  if (error instanceof ServerError) return error;
  if (!isHsmError(error)) return undefined;
  const grpcStatus =
    error.code === 'ERR_HSM_UNAVAILABLE' || error.code === 'ERR_HSM_CLOSED'
      ? status.UNAVAILABLE
      : error.code === 'ERR_HSM_OPERATION_FAILED'
        ? status.INTERNAL
        : status.FAILED_PRECONDITION;
  return { code: error.code, message: `the HSM failed: ${error.message}`, grpcStatus };
}
