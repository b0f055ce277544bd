/**
 * The agent API's TLS material, served through grpc-js certificate providers so that the server's
 * own SVID and the trust bundle can change (CA rotation, SVID renewal) without restarting the
 * listener. The SVID is re-issued at half-life and at once whenever the CA journal changes
 * (activate, taint, revoke, prune): the server never presents a certificate from a CA that stopped
 * signing or left the bundle. Client certificates are requested but not required: attestation
 * happens before the agent has one; renewal checks the presented agent SVID itself (see server.ts).
 *
 * @module
 */
import { generateKeyPairSync } from 'node:crypto';
import { type experimental, experimental as grpcExperimental, type ServerCredentials } from '@grpc/grpc-js';
import { SpiffeId } from '../../spiffe/index.js';
import type { CertificateAuthority } from '../ca/authority.js';
import type { Clock } from '../clock.js';
import { nowSeconds } from '../clock.js';
import type { Logger } from '../log.js';

type CaListener = experimental.CaCertificateUpdateListener;
type IdentityListener = experimental.IdentityCertificateUpdateListener;

/** How often the server checks whether its SVID is past half-life or the bundle changed. */
const REFRESH_MS = 30_000;

export class ServerTls implements experimental.CertificateProvider {
  readonly #ca: CertificateAuthority;
  readonly #serverId: SpiffeId;
  readonly #ttl: number;
  readonly #clock: Clock;
  readonly #logger: Logger;
  readonly #caListeners = new Set<CaListener>();
  readonly #identityListeners = new Set<IdentityListener>();
  #caPem = Buffer.alloc(0);
  #identity: { certificate: Buffer; privateKey: Buffer } | undefined;
  #renewAt = 0;
  #timer: NodeJS.Timeout | undefined;
  #unsubscribe: (() => void) | undefined;
  #refreshing: Promise<void> = Promise.resolve();

  constructor(options: {
    ca: CertificateAuthority;
    serverId: string;
    ttl: number;
    clock: Clock;
    logger: Logger;
  }) {
    this.#ca = options.ca;
    this.#serverId = SpiffeId.parse(options.serverId);
    this.#ttl = options.ttl;
    this.#clock = options.clock;
    this.#logger = options.logger;
  }

  async start(): Promise<ServerCredentials> {
    await this.refresh();
    this.#unsubscribe = this.#ca.onChange(async () => {
      await this.refresh(true);
      this.#logger.info(
        { spiffe_id: this.#serverId.toString() },
        'agent API: server SVID re-issued after a CA change',
      );
    });
    this.#timer = setInterval(() => {
      this.refresh().catch((error: unknown) =>
        this.#logger.error({ err: error }, 'agent API: renewing the server SVID failed; will retry'),
      );
    }, REFRESH_MS);
    this.#timer.unref();
    return grpcExperimental.createCertificateProviderServerCredentials(this, this, false);
  }

  stop(): void {
    clearInterval(this.#timer);
    this.#unsubscribe?.();
  }

  /** The bundle's roots, PEM; what agents must trust. */
  bundlePem(): Buffer {
    return this.#caPem;
  }

  /** Publishes the bundle's roots, and re-issues the SVID when past half-life or `force`d. */
  refresh(force = false): Promise<void> {
    const run = this.#refreshing.then(() => this.#refresh(force));
    this.#refreshing = run.catch(() => undefined);
    return run;
  }

  async #refresh(force: boolean): Promise<void> {
    const pem = Buffer.from(
      this.#ca
        .bundle()
        .toX509Bundle()
        .authorities.map((c) => c.toString())
        .join(''),
    );
    if (!pem.equals(this.#caPem)) {
      this.#caPem = pem;
      for (const listener of this.#caListeners) listener({ caCertificate: pem });
    }
    const now = nowSeconds(this.#clock);
    if (!force && this.#identity !== undefined && now < this.#renewAt) return;
    const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const minted = await this.#ca.mintServerSvid({ spiffeId: this.#serverId, publicKey, ttl: this.#ttl });
    this.#identity = {
      certificate: Buffer.from(minted.chain.map((c) => c.toString()).join('')),
      privateKey: Buffer.from(privateKey.export({ format: 'pem', type: 'pkcs8' })),
    };
    this.#renewAt = now + Math.max(1, Math.floor((minted.expiresAt - now) / 2));
    for (const listener of this.#identityListeners) listener(this.#identity);
  }

  // grpc-js subscribes before it registers the watcher that applies updates, so the current
  // material must be delivered after this call returns, as its own file watcher does.
  addCaCertificateListener(listener: CaListener): void {
    this.#caListeners.add(listener);
    process.nextTick(() => listener({ caCertificate: this.#caPem }));
  }

  removeCaCertificateListener(listener: CaListener): void {
    this.#caListeners.delete(listener);
  }

  addIdentityCertificateListener(listener: IdentityListener): void {
    this.#identityListeners.add(listener);
    process.nextTick(() => listener(this.#identity ?? null));
  }

  removeIdentityCertificateListener(listener: IdentityListener): void {
    this.#identityListeners.delete(listener);
  }
}
