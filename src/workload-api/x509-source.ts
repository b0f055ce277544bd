/**
 * A live source of the workload's X.509-SVID and bundles, kept current by a Workload API watch —
 * what TLS servers and clients read on every handshake.
 *
 * @module
 */
import type { BundleSet, TrustDomain, X509Bundle, X509BundleSource, X509Svid } from '../spiffe/index.js';
import { WorkloadApiClient, type WorkloadApiClientOptions, type X509Context } from './client.js';
import { WorkloadApiError } from './errors.js';

/** Options of {@link X509Source.create}. */
export interface X509SourceOptions extends WorkloadApiClientOptions {
  /** Use this client instead of making one (it is not closed by {@link X509Source.close}). */
  client?: WorkloadApiClient;
  /** Which SVID to use when the workload has several; default: the first (the default identity). */
  pick?: (context: X509Context) => X509Svid | undefined;
  /** Gives up waiting for the first update when aborted. */
  signal?: AbortSignal;
}

/**
 * The workload's current X.509-SVID and bundles. {@link X509Source.create} resolves after the first
 * update; later updates replace the state in place.
 *
 * @example
 * ```ts
 * const source = await X509Source.create({ address: 'unix:///run/ironroot-agent/public/api.sock' });
 * source.getX509Svid().id;
 * source.close();
 * ```
 */
export class X509Source implements X509BundleSource {
  readonly #client: WorkloadApiClient;
  readonly #ownsClient: boolean;
  readonly #pick: (context: X509Context) => X509Svid | undefined;
  readonly #abort = new AbortController();
  readonly #listeners = new Set<() => void>();
  #svid: X509Svid | undefined;
  #bundles: BundleSet | undefined;
  #lastError: WorkloadApiError | undefined;

  private constructor(options: X509SourceOptions) {
    this.#client = options.client ?? new WorkloadApiClient(options);
    this.#ownsClient = options.client === undefined;
    this.#pick = options.pick ?? ((context) => context.svids[0]?.svid);
  }

  /**
   * Starts watching and resolves with the source after the first update.
   *
   * @throws WorkloadApiError when the watch fails for good (InvalidArgument) or `signal` aborts first.
   */
  static create(options: X509SourceOptions = {}): Promise<X509Source> {
    const source = new X509Source(options);
    return new Promise((resolve, reject) => {
      const onAbort = () => {
        source.close();
        reject(
          new WorkloadApiError(
            'ERR_WORKLOADAPI_CANCELLED',
            `gave up waiting for the first X.509-SVID from ${source.#client.address}${source.#lastError === undefined ? '' : `; last error: ${source.#lastError.message}`}`,
          ),
        );
      };
      options.signal?.addEventListener('abort', onAbort, { once: true });
      const unsubscribe = source.onUpdate(() => {
        unsubscribe();
        options.signal?.removeEventListener('abort', onAbort);
        resolve(source);
      });
      source.#client
        .watchX509Context(
          {
            onUpdate: (context) => source.#update(context),
            onError: (error) => {
              source.#lastError = error;
              // After PermissionDenied the SVIDs must no longer be used (W-25).
              if (error.code === 'ERR_WORKLOADAPI_PERMISSION_DENIED') source.#svid = undefined;
            },
          },
          source.#abort.signal,
        )
        .catch((e: unknown) => {
          options.signal?.removeEventListener('abort', onAbort);
          source.close();
          reject(e);
        });
    });
  }

  /**
   * The SVID to present.
   *
   * @throws WorkloadApiError `ERR_WORKLOADAPI_NO_SVID` when the agent withdrew the identity.
   */
  getX509Svid(): X509Svid {
    if (this.#svid === undefined) {
      throw new WorkloadApiError(
        'ERR_WORKLOADAPI_NO_SVID',
        `no X.509-SVID from ${this.#client.address}${this.#lastError === undefined ? '' : `: ${this.#lastError.message}`}`,
      );
    }
    return this.#svid;
  }

  /** The X.509 bundle of `trustDomain`, the only one to authenticate its peers with (W-14). */
  getX509BundleForTrustDomain(trustDomain: TrustDomain): X509Bundle | undefined {
    return this.#bundles?.getX509BundleForTrustDomain(trustDomain);
  }

  /** Every X.509 bundle currently known. */
  getX509Bundles(): X509Bundle[] {
    return (this.#bundles?.bundles() ?? []).map((b) => b.toX509Bundle());
  }

  /** Calls `listener` after every update; returns the unsubscribe function. */
  onUpdate(listener: () => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /** Stops watching. */
  close(): void {
    this.#abort.abort();
    if (this.#ownsClient) this.#client.close();
  }

  #update(context: X509Context): void {
    this.#svid = this.#pick(context);
    this.#bundles = context.bundles;
    this.#lastError = undefined;
    for (const listener of [...this.#listeners]) listener();
  }
}
