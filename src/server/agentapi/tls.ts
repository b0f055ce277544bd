/**
 * The agent API's TLS material, handed to its listener (listener.ts) at start and again on every
 * change, so that the server's own SVID and the trust bundle can change (CA rotation, SVID renewal)
 * without restarting the listener. The SVID is re-issued at half-life and at once whenever the CA
 * journal changes (activate, taint, revoke, prune): the server never presents a certificate from a
 * CA that stopped signing or left the bundle.
 *
 * @module
 */

import { newKeyPair, SpiffeId } from '../../spiffe/index.js';
import type { CertificateAuthority } from '../ca/authority.js';
import type { Clock } from '../clock.js';
import { nowSeconds } from '../clock.js';
import type { Logger } from '../log.js';

/** PEM: the bundle's roots (what client certificates must chain to), the SVID chain and its key. */
export interface TlsMaterial {
  readonly ca: Buffer;
  readonly cert: Buffer;
  readonly key: Buffer;
}

type Listener = (material: TlsMaterial) => void;

/** How often the server checks whether its SVID is past half-life or the bundle changed. */
const REFRESH_MS = 30_000;

export class ServerTls {
  readonly #ca: CertificateAuthority;
  readonly #serverId: SpiffeId;
  readonly #ttl: number;
  readonly #clock: Clock;
  readonly #logger: Logger;
  readonly #listeners = new Set<Listener>();
  #caPem = Buffer.alloc(0);
  #identity: { cert: Buffer; key: Buffer } | undefined;
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

  /** The current material, once the first SVID is issued; from then on kept fresh. */
  async start(): Promise<TlsMaterial> {
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
    return this.#material();
  }

  /** Calls `listener` with the whole material whenever part of it changes; returns the unsubscribe. */
  onChange(listener: Listener): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  stop(): void {
    clearInterval(this.#timer);
    this.#unsubscribe?.();
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
    // Published at once, not only with the new SVID below: a failed mint must not hold the bundle back.
    if (!pem.equals(this.#caPem)) {
      this.#caPem = pem;
      if (this.#identity !== undefined) this.#publish();
    }
    const now = nowSeconds(this.#clock);
    if (!force && this.#identity !== undefined && now < this.#renewAt) return;
    const { privateKey, publicKey } = newKeyPair('ec', { namedCurve: 'P-256' });
    const minted = await this.#ca.mintServerSvid({ spiffeId: this.#serverId, publicKey, ttl: this.#ttl });
    this.#identity = {
      cert: Buffer.from(minted.chain.map((c) => c.toString()).join('')),
      key: Buffer.from(privateKey.export({ format: 'pem', type: 'pkcs8' })),
    };
    this.#renewAt = now + Math.max(1, Math.floor((minted.expiresAt - now) / 2));
    this.#publish();
  }

  #material(): TlsMaterial {
    if (this.#identity === undefined) throw new Error('the agent API has no server SVID yet');
    return { ca: this.#caPem, ...this.#identity };
  }

  #publish(): void {
    const material = this.#material();
    for (const listener of this.#listeners) listener(material);
  }
}
