/**
 * Which bundle the agent verifies the server with: its own (kept in data_dir since attestation),
 * else the bootstrap bundle from `trust_bundle` or `trust_bundle_url`. With `trust_bundle_url`, a
 * bundle gone stale (the server's CA rotated while the agent was away, and the old CA revoked) is
 * replaced from the URL, but only by one the server's certificate verifies against: the URL can
 * bring the server's current CA, never make the agent trust another server.
 *
 * @module
 */
import type { X509Certificate } from 'node:crypto';
import type { Logger } from 'pino';
import { printableUrl } from '../host/index.js';
import { TrustDomain, X509Bundle } from '../spiffe/index.js';
import { fetchTrustBundle } from './bundle-url.js';
import type { AgentConfig } from './config/schema.js';
import { AgentError } from './errors.js';
import { readTrustBundle } from './preflight.js';
import { judgeServerChain, type ServerTrustError, type TrustBundle } from './server-cert.js';
import type { AgentStore } from './store.js';

export class ServerTrust {
  readonly #config: AgentConfig;
  readonly #store: AgentStore;
  readonly #logger: Logger;
  /** Fetched from trust_bundle_url while the agent has no bundle of its own (kept in memory only). */
  #fetched: readonly X509Certificate[] | undefined;
  /** No fetch of trust_bundle_url for a stale bundle before this (Unix ms): once per backoff step. */
  #refetchNotBefore = 0;
  /** The last reason a fetched bundle was not adopted, so each reason is logged once. */
  #refetchProblem: string | undefined;
  /**
   * data_dir's bundle as last read and parsed: every call on the agent SVID asks for the bundle,
   * and the same array back tells the kept connection nothing changed.
   */
  #parsed: { pem: string; authorities: readonly X509Certificate[] } | undefined;

  constructor(config: AgentConfig, store: AgentStore, logger: Logger) {
    this.#config = config;
    this.#store = store;
    this.#logger = logger;
  }

  /**
   * The bundle to verify the server with; undefined with insecure bootstrap. Fetches
   * trust_bundle_url when the agent has no bundle of its own yet (ERR_AGENT_TRUST_BUNDLE_URL when
   * it cannot).
   */
  async current(): Promise<TrustBundle | undefined> {
    const { trust_bundle: file, trust_bundle_url: url, trust_bundle_format: format } = this.#config;
    const stored = this.#stored();
    if (stored !== undefined)
      return {
        authorities: stored,
        source: {
          key: 'data_dir',
          location: this.#store.bundlePath,
          refetchUrl: url === undefined ? undefined : printableUrl(url),
        },
      };
    if (file !== undefined)
      return {
        authorities: readTrustBundle(file, this.#config.trust_domain, format),
        source: { key: 'trust_bundle', location: file },
      };
    if (url === undefined) return undefined;
    if (this.#fetched === undefined) {
      this.#fetched = await fetchTrustBundle(url, format, this.#config.trust_domain);
      this.#logger.info(
        { trust_bundle_url: printableUrl(url), authorities: this.#fetched.length },
        'bootstrap bundle fetched from trust_bundle_url',
      );
    }
    return {
      authorities: this.#fetched,
      source: { key: 'trust_bundle_url', location: printableUrl(url), refetchUrl: printableUrl(url) },
    };
  }

  /** The CA certificates known before any call, for the Workload API's bundle until the first sync. */
  bootstrapRoots(): readonly X509Certificate[] {
    const { trust_bundle: file, trust_domain: td, trust_bundle_format: format } = this.#config;
    return this.#stored() ?? (file !== undefined ? readTrustBundle(file, td, format) : []);
  }

  /**
   * After the server's certificate failed against a stale bundle (`error`): fetches
   * trust_bundle_url, at most once until `waitMs` from now (the backoff's next step), and adopts
   * the fetched bundle into data_dir only when the server's certificate verifies against it as
   * the server's SVID of this trust domain.
   */
  async refetch(error: ServerTrustError, waitMs: number): Promise<void> {
    const url = this.#config.trust_bundle_url;
    if (url === undefined || Date.now() < this.#refetchNotBefore) return;
    this.#refetchNotBefore = Date.now() + waitMs;
    let problem: AgentError;
    try {
      const authorities = await fetchTrustBundle(
        url,
        this.#config.trust_bundle_format,
        this.#config.trust_domain,
      );
      const refusal = judgeServerChain(error.presented, this.#config.trust_domain, {
        authorities,
        source: { key: 'trust_bundle_url', location: printableUrl(url), refetchUrl: printableUrl(url) },
      });
      if (refusal === undefined) {
        this.#store.saveBundle(authorities);
        this.#fetched = authorities;
        this.#refetchProblem = undefined;
        this.#logger.info(
          { trust_bundle_url: printableUrl(url), authorities: authorities.length },
          "trust bundle adopted from trust_bundle_url: the server's certificate verifies against it",
        );
        return;
      }
      problem = refusal;
    } catch (cause) {
      if (!(cause instanceof AgentError)) throw cause;
      problem = cause;
    }
    if (problem.message === this.#refetchProblem) return;
    this.#refetchProblem = problem.message;
    this.#logger.warn(
      { reason: problem.code, err_message: problem.message, trust_bundle_url: url },
      'trust_bundle_url gave no bundle that verifies the server; keeping the bundle in use and fetching again at the next retry',
    );
  }

  #stored(): readonly X509Certificate[] | undefined {
    const pem = this.#store.loadBundle();
    if (pem === undefined) return undefined;
    if (this.#parsed?.pem !== pem)
      this.#parsed = {
        pem,
        authorities: X509Bundle.parsePem(TrustDomain.parse(this.#config.trust_domain), pem).authorities,
      };
    return this.#parsed.authorities;
  }
}
