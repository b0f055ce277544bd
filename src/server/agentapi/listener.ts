/**
 * The agent API's TLS listener. grpc-js's own secure listener answers each call's getAuthContext()
 * with a fresh `TLSSocket.getPeerCertificate()`: an object with the parsed names, the public key and
 * three fingerprints, 80–95 µs a call, although a connection's peer certificate never changes; at
 * thousands of agents that was 15 % of the server's CPU. Here the server ends TLS itself (node:tls,
 * the same material and options grpc-js used), builds the auth context once per connection, and
 * hands each connection to grpc-js through a connection injector of its own whose one interceptor
 * answers getAuthContext() with that connection's context. A call thus reaches its own connection's
 * context by construction: no lookup by address, nothing shared between connections.
 *
 * @module
 */
import { createServer, type TLSSocket, type Server as TlsServer } from 'node:tls';
import {
  experimental,
  type Server as GrpcServer,
  ServerCredentials,
  ServerInterceptingCall,
  type ServerInterceptingCallInterface,
} from '@grpc/grpc-js';
import { splitHostPort } from '../../host/index.js';
import type { Logger } from '../log.js';
import type { ServerTls, TlsMaterial } from './tls.js';

type AuthContext = ReturnType<ServerInterceptingCallInterface['getAuthContext']>;

/** A call on one connection, answering getAuthContext() from what that connection presented. */
class ConnectionCall extends ServerInterceptingCall {
  readonly #context: AuthContext;

  constructor(next: ServerInterceptingCallInterface, context: AuthContext) {
    super(next);
    this.#context = context;
  }

  override getAuthContext(): AuthContext {
    return this.#context;
  }
}

/**
 * What grpc-js's getAuthContext() answers for `socket`, read once: the peer certificate only when
 * TLS verified it against the bundle the listener had at the handshake (admission verifies it
 * again against today's bundle on every call).
 */
function authContextOf(socket: TLSSocket): AuthContext {
  if (!socket.authorized) return Object.freeze({});
  const peer = socket.getPeerCertificate();
  return Object.freeze({
    transportSecurityType: 'ssl',
    ...(peer.raw === undefined ? {} : { sslPeerCertificate: Object.freeze(peer) }),
  });
}

function secureContextOptions(material: TlsMaterial) {
  return { ca: material.ca, cert: material.cert, key: material.key };
}

export class AgentListener {
  readonly #grpc: GrpcServer;
  readonly #tls: ServerTls;
  readonly #logger: Logger;
  #server: TlsServer | undefined;
  #unsubscribe: (() => void) | undefined;
  #closed = false;

  constructor(grpc: GrpcServer, tls: ServerTls, logger: Logger) {
    this.#grpc = grpc;
    this.#tls = tls;
    this.#logger = logger;
  }

  /** Listens on `address` (`host:port`); resolves to the bound port. */
  listen(address: string, material: TlsMaterial): Promise<number> {
    const server = createServer({
      ...secureContextOptions(material),
      ALPNProtocols: ['h2'],
      // Attestation happens before the agent has a certificate: asked for, not required.
      requestCert: true,
      rejectUnauthorized: false,
    });
    this.#server = server;
    // Rotation and renewal: new connections get the new material, open ones keep theirs (as grpc-js did).
    this.#unsubscribe = this.#tls.onChange((next) => server.setSecureContext(secureContextOptions(next)));
    server.on('secureConnection', (socket) => this.#accept(socket));
    const { host, port } = splitHostPort(address);
    return new Promise((resolve, reject) => {
      server.once('error', reject);
      server.listen({ host, port }, () => {
        server.off('error', reject);
        server.on('error', (error) => this.#logger.error({ err: error }, 'agent API listener failed'));
        const bound = server.address();
        resolve(typeof bound === 'object' && bound !== null ? bound.port : port);
      });
    });
  }

  #accept(socket: TLSSocket): void {
    // The context is read once; a TLS 1.2 renegotiation could change the peer certificate under it.
    // OpenSSL 3 already refuses one a client starts; this holds whatever OpenSSL Node is built with.
    socket.disableRenegotiation();
    socket.on('error', (error) => this.#logger.debug({ err: error }, 'agent API connection failed'));
    // A handshake that ends after close() must not reach a grpc-js server shutting down.
    if (this.#closed || socket.alpnProtocol !== 'h2') {
      socket.destroy();
      return;
    }
    const context = authContextOf(socket);
    const injector = this.#grpc.createConnectionInjector(
      experimental.createServerCredentialsWithInterceptors(ServerCredentials.createInsecure(), [
        (_method, call) => new ConnectionCall(call, context),
      ]),
    );
    socket.once('close', () => injector.destroy());
    injector.injectConnection(socket);
  }

  /** Stops accepting; the connections grpc-js serves are ended by its shutdown. */
  close(): void {
    this.#closed = true;
    this.#unsubscribe?.();
    this.#server?.close();
  }
}
