/**
 * ironroot-agent's main loop: attest (or resume with the persisted SVID), renew at half-life with
 * jitter, attest again when the server says the attestation is gone, and back off exponentially
 * (with a cap and jitter) while the server is away, without ever exiting for it. Every loop that
 * calls the server goes through one {@link ServerContact}: one backoff, one log line per change.
 * With several servers (servers.ts), a call that cannot reach the one in use is made again at once
 * on the next; the backoff starts once every server failed in a row.
 *
 * Beside it, once the node has an SVID, the sync loop keeps the workloads' SVID cache current
 * (entries, bundles, SVID rotation) every `sync_interval` or sooner when an SVID is due, and the
 * Workload API serves that cache on `socket_path`. While the server is away the cache keeps
 * serving what it holds until it expires.
 *
 * The cache is persisted, sealed under the agent key, at every change (cachefile.ts): an agent
 * restarted while the server is away serves what it held, still valid, until the first sync.
 *
 * TPM nodes also keep the Reattest stream open (continuous attestation): the server asks for a
 * quote whenever it wants one, and says whether the node is still trusted. While it is not, the
 * cache serves no identity; when a re-quote passes again, it serves again. A reboot (new TPM reset
 * count) takes a full attestation, which the agent starts itself.
 *
 * @module
 */
import { type KeyObject, X509Certificate } from 'node:crypto';
import type { Server } from 'node:http';
import type { ClientDuplexStream } from '@grpc/grpc-js';
import type { Logger } from 'pino';
import type {
  QuoteChallengeMessage,
  ReattestChallenge,
  ReattestOutcomeMessage,
  ReattestRequest,
} from '../agent-api/proto.js';
import { type DirLock, lockDir, releaseFreedMemory } from '../host/index.js';
import { createCsr, createKeySigner, newKeyPair, SpiffeId } from '../spiffe/index.js';
import { WorkloadApiServer } from '../workload-api/server.js';
import { challengeIn, TpmAttestor } from './attestor/tpm.js';
import { SvidCache } from './cache.js';
import { type OpenedCacheFile, openCache, sealCache } from './cachefile.js';
import { AgentApiClient, isServerAnswer, type Result } from './client.js';
import { serverAddresses } from './config/defaults.js';
import type { AgentConfig } from './config/schema.js';
import { AgentError, REATTEST_CODES } from './errors.js';
import { evaluateHealth, type HealthStatus, healthSocketPath, startHealthServer } from './health.js';
import { KeptClient, type Lease } from './kept-client.js';
import { MetricsRelay } from './metrics-sink.js';
import { type CallPath, ServerContact } from './outage.js';
import { DATA_DIR_LOCK } from './preflight.js';
import { ServerTrustError, type TrustBundle } from './server-cert.js';
import { failsOver, type LookupAll, ServerList, type ServerTarget } from './servers.js';
import { AgentStore, type StoredAk, type StoredSvid } from './store.js';
import { WorkloadSync } from './sync.js';
import { ServerTrust } from './trust.js';
import type { WorkloadAttestor } from './workloadattestor/attestor.js';
import { K8sAttestor } from './workloadattestor/k8s.js';
import { SystemdAttestor } from './workloadattestor/systemd.js';
import { UnixAttestor } from './workloadattestor/unix.js';

/** Renewal happens at half the SVID's life, moved by up to this fraction of it either way. */
const RENEW_JITTER = 0.1;
/** Re-quote refusals after which the server's copy of the event log is not ours: send it whole. */
const RESEND_LOG_CODES: ReadonlySet<string> = new Set([
  'ERR_REATTEST_EVENTLOG_OFFSET',
  'ERR_REATTEST_EVENTLOG_NOT_EXTENSION',
]);

/** The server's refusal of a banned agent (or node). */
const BANNED = 'ERR_ATTEST_BANNED';

/** How long an answered re-quote may hold the TPM lock waiting for the server's verdict. */
const MAX_VERDICT_WAIT_MS = 5 * 60_000;

/** A re-quote answered and not yet judged: the log length it covered, and the TPM lock it holds. */
interface InFlight {
  readonly logLength: number;
  readonly release: () => void;
}

export class Agent {
  readonly #config: AgentConfig;
  readonly #logger: Logger;
  readonly #store: AgentStore;
  readonly #tpm: TpmAttestor;
  readonly #trust: ServerTrust;
  #svid: StoredSvid | undefined;
  #renewAt = 0;
  readonly #contact: ServerContact;
  /** The servers, and which one calls go to. */
  readonly #servers: ServerList;
  /** Unix seconds of the last sync round that succeeded; undefined before the first. */
  #lastSyncAt: number | undefined;
  readonly #startedAt = nowSeconds();
  #stopped = false;
  #wake: (() => void) | undefined;
  #loop: Promise<void> | undefined;
  #health: Server | undefined;
  /** prom-client behind it only when metrics_address is set (start()). */
  readonly #metrics = new MetricsRelay();
  #metricsServer: Server | undefined;
  /** Whether the agent has held an SVID of its own: a new one then replaces it (a rotation). */
  #heldSvid = false;
  #lock: DirLock | undefined;
  readonly #cache: SvidCache;
  readonly #sync: WorkloadSync;
  #syncLoop: Promise<void> | undefined;
  #syncWake: (() => void) | undefined;
  /**
   * The connection every call on the agent SVID shares (sync, renewal, JWT-SVIDs, re-quotes), kept
   * while the agent SVID and the bundle stay.
   */
  readonly #server = new KeptClient();
  #workloadApi: WorkloadApiServer | undefined;
  #reattestLoop: Promise<void> | undefined;
  #reattestWake: (() => void) | undefined;
  #reattestCall: ClientDuplexStream<ReattestRequest, ReattestChallenge> | undefined;
  /** Set by a re-quote that found the node rebooted: the next step is a full attestation. */
  #mustAttest = false;
  /** Length of the event log the server last verified from us; undefined: unknown, send it whole. */
  #eventLogSent: number | undefined;
  /**
   * Serialises what changes the server's copy of our event log (attestation, renewal, a re-quote
   * from answer to verdict), so a re-quote's tail always follows what the server holds.
   */
  #tpmLock: Promise<void> = Promise.resolve();
  readonly #reattest = { trusted: true, code: '', reason: '', passed: 0, failed: 0 };
  /** Calls the server refused as banned, so far. */
  #bans = 0;
  readonly #counts = { attestations: 0, renewals: 0 };

  /** `options.lookup` resolves server host names instead of the host's resolver (tests). */
  constructor(config: AgentConfig, logger: Logger, options: { lookup?: LookupAll } = {}) {
    this.#config = config;
    this.#logger = logger;
    this.#servers = new ServerList(serverAddresses(config), logger, options.lookup, (reason) =>
      this.#metrics.serverChanged(reason),
    );
    this.#store = new AgentStore(config.data_dir);
    this.#trust = new ServerTrust(config, this.#store, logger);
    this.#tpm = new TpmAttestor({ tcti: config.tcti, ek: config.ek, eventLogPath: config.event_log_path });
    this.#cache = new SvidCache({
      trustDomain: config.trust_domain,
      attestors: workloadAttestors(config),
      bootstrapRoots: this.#trust.bootstrapRoots(),
      mintJwt: (entryId, audience) => this.#mintJwt(entryId, audience),
      observer: this.#metrics,
      onChange: () => this.#persistCache(),
    });
    this.#sync = new WorkloadSync(this.#cache, logger, this.#metrics);
    this.#contact = new ServerContact({
      retryInitialMs: config.retry_initial * 1000,
      retryMaxMs: config.retry_max * 1000,
      logger,
    });
  }

  status(): HealthStatus {
    const now = nowSeconds();
    const svid = this.#svid;
    const error = this.#contact.lastError;
    const since = this.#contact.failingSince;
    const failing = this.#contact.consecutiveFailures > 0;
    const valid = svid !== undefined && svid.expiresAt > now;
    const workloads = this.#cache.validity(now);
    const verdict = evaluateHealth({
      now,
      agentSvidValid: valid,
      lastSyncAt: this.#lastSyncAt ?? this.#startedAt,
      syncIntervalSeconds: this.#config.sync_interval,
      served: [
        ...(valid ? [{ notBefore: notBefore(svid), expiresAt: svid.expiresAt }] : []),
        ...workloads.served,
      ],
      unserved: workloads.unserved,
      failing,
    });
    return {
      state: valid
        ? failing
          ? 'degraded'
          : 'healthy'
        : failing || svid !== undefined
          ? 'unavailable'
          : 'starting',
      ...verdict,
      spiffe_id: svid?.spiffeId ?? '',
      server_address: this.#servers.inUse ?? null,
      expires_at: svid?.expiresAt ?? 0,
      last_error: error ? { code: error.code, message: error.message } : null,
      consecutive_failures: this.#contact.consecutiveFailures,
      failing_since: since === undefined ? null : Math.floor(since / 1000),
      last_sync_at: this.#lastSyncAt ?? null,
      ...this.#counts,
      suspended: this.#reattest.trusted ? null : { code: this.#reattest.code, reason: this.#reattest.reason },
      ...(this.#config.attestation === 'tpm' ? { reattest: { ...this.#reattest } } : {}),
      workload: {
        entries: this.#cache.entryCount,
        svids: this.#cache.svidCount,
        socket_path: this.#workloadApi?.socketPath ?? '',
        ...this.#sync.stats,
      },
    };
  }

  /** Where `/metrics` is served (the bound port, when `metrics_address` asked for port 0); undefined: off. */
  get metricsAddress(): string | undefined {
    const bound = this.#metricsServer?.address();
    if (bound === null || bound === undefined || typeof bound === 'string') return undefined;
    return bound.family === 'IPv6' ? `[${bound.address}]:${bound.port}` : `${bound.address}:${bound.port}`;
  }

  async start(): Promise<void> {
    this.#store.prepare();
    // Held until the agent stops (or the process ends, however): a second agent on this data
    // directory would take over the first one's health socket and SVID files.
    const lock = lockDir(this.#config.data_dir, DATA_DIR_LOCK);
    this.#lock = lock;
    try {
      this.#health = await startHealthServer(healthSocketPath(this.#config.data_dir), () => this.status());
      if (this.#config.metrics_address !== undefined) {
        const { AgentMetrics, startMetricsServer } = await import('./metrics.js');
        const metrics = new AgentMetrics({
          soonestExpiryMs: (nowMs) => this.#cache.soonestExpiryMs(nowMs),
          entryCount: () => this.#cache.entryCount,
          refusedFederatedBundles: () => this.#cache.refusedFederatedBundles,
        });
        this.#metricsServer = await startMetricsServer(this.#config.metrics_address, metrics.registry);
        this.#metrics.target = metrics;
        this.#logger.info({ metrics_address: this.metricsAddress }, 'serving Prometheus metrics at /metrics');
      }
    } catch (error) {
      await closeServer(this.#health);
      this.#health = undefined;
      lock.release();
      throw error;
    }
    if (this.#config.insecure_bootstrap && this.#store.loadBundle() === undefined)
      this.#logger.warn(
        'INSECURE BOOTSTRAP: the server is not authenticated for the first attestation; give trust_bundle in production',
      );
    if (this.#store.completeSvidSave())
      this.#logger.info('finished saving the agent SVID the last run was stopped in the middle of');
    const stored = this.#store.loadSvid();
    if (stored && stored.expiresAt > nowSeconds()) {
      this.#adopt(stored, false);
      this.#logger.info(
        { agent_id: stored.spiffeId, expires_at: stored.expiresAt },
        'resuming with the stored agent SVID',
      );
    }
    // Workloads are served from the persisted cache at once, not after a first sync round that
    // may wait for a server that is away.
    if (stored !== undefined && this.#restoreCache(stored.key)) await this.#startWorkloadApi();
    this.#loop = this.#run();
    this.#syncLoop = this.#runSync();
    if (this.#config.attestation === 'tpm') this.#reattestLoop = this.#runReattest();
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    this.#wake?.();
    this.#syncWake?.();
    this.#reattestWake?.();
    this.#reattestCall?.cancel();
    await this.#loop;
    await this.#syncLoop;
    await this.#reattestLoop;
    this.#server.close();
    await this.#workloadApi?.close();
    await closeServer(this.#metricsServer);
    await closeServer(this.#health);
    this.#lock?.release();
  }

  async #run(): Promise<void> {
    while (!this.#stopped) {
      // Another loop's failure holds every call back, however this loop was woken.
      const wait = this.#contact.waitMs('agent_svid');
      if (wait > 0) {
        await this.#sleep(wait);
        continue;
      }
      let delayMs: number;
      try {
        const contacted = await this.#step();
        if (contacted !== 'none') this.#contact.succeeded('agent_svid', contacted === 'attested');
        delayMs = Math.max(0, this.#renewAt * 1000 - Date.now());
      } catch (error) {
        const e = asAgentError(error);
        delayMs = await this.#failed(e, 'agent_svid');
      }
      await this.#sleep(delayMs);
    }
  }

  /** Attests or renews when due; says which it did. */
  async #step(): Promise<'attested' | 'renewed' | 'none'> {
    if (this.#mustAttest) {
      this.#mustAttest = false;
      this.#svid = undefined;
      this.#store.dropSvid();
      await this.#attest();
      return 'attested';
    }
    const svid = this.#svid;
    if (svid === undefined || svid.expiresAt <= nowSeconds()) {
      await this.#attest();
      return 'attested';
    }
    if (nowSeconds() < this.#renewAt) return 'none';
    try {
      await this.#renew(svid);
      return 'renewed';
    } catch (error) {
      if (error instanceof AgentError && REATTEST_CODES.has(error.code)) {
        this.#logger.warn(
          { reason: error.code },
          'the server no longer knows this attestation; attesting again',
        );
        this.#svid = undefined;
        this.#store.dropSvid();
        await this.#attest();
        return 'attested';
      }
      throw error;
    }
  }

  async #attest(): Promise<void> {
    await this.#exclusive(() => this.#attestLocked());
  }

  /**
   * Attests over a connection of its own, closed after: it presents no SVID (the one the agent
   * holds may be expired or refused, and the TLS handshake would then fail before the call).
   */
  async #attestLocked(): Promise<void> {
    const started = performance.now();
    const { key, csr } = await newCsr(this.#config.trust_domain);
    let result: Result;
    if (this.#config.attestation === 'join_token') {
      result = await this.#metrics.timeIssue('agent', () =>
        this.#attestOn(
          { method: 'join_token', csr, tpm: null, join_token: this.#config.join_token ?? '' },
          async () => {
            throw new AgentError(
              'ERR_AGENT_PROTOCOL',
              'the server sent a TPM challenge for join_token attestation',
            );
          },
        ),
      );
    } else {
      // One AK for every server tried: each challenges it afresh.
      const { evidence, ak } = await this.#tpm.evidence();
      let logLength = 0;
      result = await this.#metrics.timeIssue('agent', () =>
        this.#attestOn({ method: 'tpm', csr, tpm: evidence, join_token: '' }, async (challenge) => {
          const answer = await this.#tpm.answer(ak, challengeIn(challenge));
          logLength = answer.event_log.length;
          return answer;
        }),
      );
      this.#store.saveAk(ak);
      this.#eventLogSent = logLength;
      // A full attestation makes the node trusted again.
      this.#trusted();
    }
    this.#save(result, key);
    this.#reattestWake?.();
    this.#counts.attestations++;
    this.#logger.info(
      {
        agent_id: result.spiffe_id,
        attestation_method: this.#config.attestation,
        expires_at: result.expires_at,
        duration_ms: Math.round(performance.now() - started),
      },
      'node attested',
    );
  }

  /** One attestation handshake, on the current server (the next after a failure to reach it). */
  #attestOn(
    params: Parameters<AgentApiClient['attest']>[0],
    answer: Parameters<AgentApiClient['attest']>[1],
  ): Promise<Result> {
    return this.#failover(async (target) => {
      const client = this.#open(undefined, await this.#trust.current(), target);
      try {
        return await client.attest(params, answer);
      } finally {
        client.close();
      }
    });
  }

  async #renew(svid: StoredSvid): Promise<void> {
    await this.#exclusive(() => this.#renewLocked(svid));
  }

  /**
   * Renews over the shared connection: the server wants the current SVID presented, which is the
   * one that connection was made with. The SVID it brings retires that connection (#adopt).
   */
  async #renewLocked(svid: StoredSvid): Promise<void> {
    const { key, csr } = await newCsr(this.#config.trust_domain);
    await this.#onServer(svid, async (client) => {
      let result: Result;
      if (this.#config.attestation === 'join_token') {
        result = await this.#metrics.timeIssue('agent', () =>
          client.renew({ csr, tpm: null }, async () => {
            throw new AgentError(
              'ERR_AGENT_PROTOCOL',
              'the server sent a TPM challenge to a join_token agent',
            );
          }),
        );
      } else {
        const ak: StoredAk | undefined = this.#store.loadAk();
        if (ak === undefined)
          throw new AgentError('ERR_AGENT_AK_UNKNOWN', 'no AK blobs in the data directory');
        const evidence = await this.#tpm.ekEvidence(ak);
        let logLength = 0;
        result = await this.#metrics.timeIssue('agent', () =>
          client.renew({ csr, tpm: evidence }, async (challenge) => {
            const answer = await this.#tpm.answer(ak, challengeIn(challenge));
            logLength = answer.event_log.length;
            return answer;
          }),
        );
        this.#eventLogSent = logLength;
      }
      this.#save(result, key);
      this.#counts.renewals++;
      this.#logger.info({ agent_id: result.spiffe_id, expires_at: result.expires_at }, 'agent SVID renewed');
    });
  }

  /**
   * Syncs while the node holds a valid SVID; waits for one otherwise (attestation wakes it). The
   * Workload API starts after the first round, so workloads that connect early find identities.
   */
  async #runSync(): Promise<void> {
    while (!this.#stopped) {
      const svid = this.#svid;
      if (svid === undefined || svid.expiresAt <= nowSeconds()) {
        await this.#sleepSync(this.#config.sync_interval * 1000);
        continue;
      }
      const wait = this.#contact.waitMs('sync');
      if (wait > 0) {
        await this.#sleepSync(wait);
        continue;
      }
      const roundAt = nowSeconds();
      let retryMs: number | undefined;
      const syncEnded = this.#metrics.syncStarted();
      const bansBefore = this.#bans;
      try {
        await this.#onServer(svid, (client) => this.#sync.run(client, () => this.#stopped));
        this.#lastSyncAt = nowSeconds();
        this.#contact.succeeded('sync');
        // The server admitted the agent after the ban was seen, so it was lifted; not when another
        // call was refused as banned while this round ran. (A re-quote's verdict is lifted by the
        // next passing re-quote, not here.)
        if (this.#reattest.code === BANNED && this.#bans === bansBefore) this.#trusted();
        this.#keepBundle();
        this.#renewIfCaRotated();
      } catch (error) {
        const e = asAgentError(error);
        this.#metrics.syncFailed(e.code);
        // Not the next SVID due: one already due would make that now, again and again.
        retryMs = await this.#failed(e, 'sync');
        // The attestation is gone: the main loop finds out at its next renewal and attests again.
        // Not when the SVID changed meanwhile: a call with the one just replaced may be refused.
        if (REATTEST_CODES.has(e.code) && svid === this.#svid) {
          this.#renewAt = 0;
          this.#wake?.();
        }
      } finally {
        syncEnded();
      }
      if (this.#workloadApi === undefined && !this.#stopped) await this.#startWorkloadApi();
      // What start-up and earlier rounds freed (their keys and certificates, once collected) is
      // handed back to the kernel: about 6 MiB idle, more after issuing (docs/performance.md).
      releaseFreedMemory();
      const next = this.#cache.nextEvent(roundAt);
      // One millisecond past the event: a timer may fire up to 1 ms early (libuv's loop clock has
      // millisecond resolution), and `due` must see the whole second reached.
      const untilNext = next === undefined ? Number.POSITIVE_INFINITY : next * 1000 + 1 - Date.now();
      await this.#sleepSync(retryMs ?? Math.max(0, Math.min(this.#config.sync_interval * 1000, untilNext)));
    }
  }

  /**
   * The server's SVID is signed by whichever CA is active; after a CA rotation only the synced
   * bundle knows the new one. Persisting it keeps the agent able to authenticate the server (and
   * to start after a restart) once the old CA is gone.
   */
  #keepBundle(): void {
    const roots = this.#cache.bundle.x509Authorities;
    const pem = roots.map((c) => c.toString()).join('');
    if (roots.length > 0 && pem !== this.#store.loadBundle()) {
      this.#store.saveBundle(roots);
      this.#logger.info({ authorities: roots.length }, 'trust bundle updated from the server');
    }
  }

  /**
   * An agent SVID not signed by the CA that signs now is renewed at once, not at half-life: the
   * renewal brings the bundle with the new CA, and the previous CA can then be revoked without
   * cutting this agent off (the server's `revoke` counts agents that have not renewed yet).
   */
  #renewIfCaRotated(): void {
    const active = this.#cache.activeAuthority;
    const leaf = this.#svid?.chain[0];
    if (active === undefined || leaf === undefined || this.#renewAt <= nowSeconds()) return;
    if (leaf.verify(active.publicKey)) return;
    this.#logger.info(
      { agent_id: this.#svid?.spiffeId, authority: active.serialNumber },
      'the server signs with a new CA: renewing the agent SVID now',
    );
    this.#renewAt = 0;
    this.#wake?.();
  }

  async #startWorkloadApi(): Promise<void> {
    try {
      this.#workloadApi = await WorkloadApiServer.listen({
        provider: this.#cache,
        socketPath: this.#config.socket_path,
        logger: this.#logger,
        onCall: (call) => this.#metrics.workloadApiCall(call),
      });
      this.#logger.info({ socket_path: this.#config.socket_path }, 'Workload API listening');
    } catch (error) {
      this.#logger.error(
        { err_message: (error as Error).message, socket_path: this.#config.socket_path },
        'cannot serve the Workload API; fix socket_path (or stop what holds it), will retry',
      );
    }
  }

  async #mintJwt(
    entryId: string,
    audience: readonly string[],
  ): Promise<{ token: string; expiresAt: number }> {
    const svid = this.#svid;
    if (svid === undefined)
      throw new AgentError('ERR_AGENT_STATE', 'the node is not attested yet; JWT-SVIDs need the server');
    const minted = await this.#onServer(svid, (client) =>
      this.#metrics.timeIssue('jwt', () => client.newJwtSvid(entryId, audience)),
    );
    return { token: minted.token, expiresAt: minted.expires_at };
  }

  #sleepSync(ms: number): Promise<void> {
    if (this.#stopped) return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, ms);
      this.#syncWake = () => {
        clearTimeout(timer);
        resolve();
      };
    });
  }

  /** A lease on the shared connection for `svid`, today's bundle and the server `target`. */
  async #lease(svid: StoredSvid, target: ServerTarget): Promise<Lease> {
    const bundle = await this.#trust.current();
    return this.#server.acquire(svid, trustKey(bundle), target.address, () =>
      this.#open(svid, bundle, target),
    );
  }

  /**
   * `use` on the shared connection to the current server; a failure that may lie in the connection
   * retires it, and one to reach the server makes it again on the next (see {@link #failover}).
   */
  #onServer<T>(svid: StoredSvid, use: (client: AgentApiClient) => Promise<T>): Promise<T> {
    return this.#failover(async (target) => {
      const lease = await this.#lease(svid, target);
      try {
        return await use(lease.client);
      } catch (error) {
        lease.failed(error);
        throw error;
      } finally {
        lease.release();
      }
    });
  }

  /**
   * `call` on the current server; when it cannot reach that server, again at once on the next,
   * until every server failed in a row: that error is thrown, for the caller's backoff.
   */
  async #failover<T>(call: (target: ServerTarget) => Promise<T>): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      const target = await this.#servers.current();
      try {
        const result = await call(target);
        this.#servers.reached(target);
        return result;
      } catch (error) {
        if (isServerAnswer(error)) this.#servers.reached(target);
        // Whatever the agent holds was issued to a node the operator has since banned.
        if (error instanceof AgentError && error.code === BANNED) {
          this.#bans++;
          this.#untrusted(BANNED, error.message);
        }
        if (
          !failsOver(error) ||
          this.#servers.failed(target, error as AgentError) === 'exhausted' ||
          attempt >= this.#servers.size ||
          this.#stopped
        )
          throw error;
      }
    }
  }

  #open(
    identity: StoredSvid | undefined,
    bundle: TrustBundle | undefined,
    target: ServerTarget,
  ): AgentApiClient {
    return new AgentApiClient({
      address: target.address,
      trustDomain: this.#config.trust_domain,
      bundlePem: bundle?.authorities.map((c) => c.toString()).join(''),
      ...(bundle ? { bundleSource: bundle.source } : {}),
      ...(identity
        ? {
            identity: {
              keyPem: identity.key.export({ format: 'pem', type: 'pkcs8' }).toString(),
              chainPem: identity.chain.map((c) => c.toString()).join(''),
            },
          }
        : {}),
    });
  }

  /**
   * Records a failed call with the backoff; a bundle found stale is fetched again from
   * trust_bundle_url (when set) before the next attempt. Returns the wait before `path` calls again.
   */
  async #failed(error: AgentError, path: CallPath): Promise<number> {
    const waitMs = this.#contact.failed(error, path);
    if (error instanceof ServerTrustError && error.code === 'ERR_AGENT_TRUST_BUNDLE_STALE')
      await this.#trust.refetch(error, waitMs);
    return waitMs;
  }

  #save(result: Result, key: KeyObject): void {
    const chain = result.svid_chain.map((der) => new X509Certificate(der));
    this.#store.saveBundle(result.bundle.map((der) => new X509Certificate(der)));
    // The cache is sealed again under the new key and saved with it: a restart could not open a
    // file sealed under the old key, which is gone from disk once the new one is in place.
    const cacheError = this.#store.saveSvid(chain, key, this.#sealedCache(key));
    if (cacheError !== undefined) this.#cacheWriteFailed(cacheError);
    this.#metrics.bundleReceived();
    if (this.#heldSvid) this.#metrics.rotated('agent');
    this.#adopt({ spiffeId: result.spiffe_id, chain, key, expiresAt: result.expires_at }, true);
    this.#syncWake?.();
  }

  /**
   * Takes over the cache the last run persisted, if it was sealed under `key` (the stored agent
   * key); a file that cannot be used is logged and left for the next write to replace. True when
   * the cache was restored.
   */
  #restoreCache(key: KeyObject): boolean {
    const path = this.#store.cachePath;
    let content: OpenedCacheFile;
    try {
      const opened = this.#openPersistedCache(key);
      if (opened === undefined) return false;
      content = opened;
      const outcome = this.#cache.restore(content.cache, this.#trust.bootstrapRoots(), nowSeconds());
      this.#logger.info({ path, ...outcome }, 'serving the persisted SVID cache until the server is reached');
    } catch (error) {
      const e =
        error instanceof AgentError && error.code.startsWith('ERR_AGENT_CACHE_')
          ? error
          : new AgentError(
              'ERR_AGENT_CACHE_INVALID',
              `${path} cannot be used: ${(error as Error).message}; nothing is served from it, and it is replaced at the next sync`,
            );
      // Another agent key is the expected trace of a new attestation; anything else is damage.
      if (e.code === 'ERR_AGENT_CACHE_FOREIGN_KEY')
        this.#logger.info(
          { reason: e.code, path, err_message: e.message },
          'the persisted SVID cache is of another agent key: discarded',
        );
      else
        this.#logger.warn(
          { reason: e.code, path, err_message: e.message },
          'the persisted SVID cache is refused',
        );
      return false;
    }
    if (content.untrusted !== null) {
      // Untrusted when it stopped: it stays so until a re-quote or an attestation passes.
      const { code, reason } = content.untrusted;
      Object.assign(this.#reattest, { trusted: false, code, reason });
      this.#cache.suspend();
      this.#logger.warn(
        { reason: code, err_message: reason },
        code === BANNED
          ? 'the agent was banned when it stopped: serving no identity until it is unbanned'
          : 'the node was untrusted when the agent stopped: serving no identity until a re-quote passes',
      );
    }
    return true;
  }

  /**
   * The persisted cache sealed under `key`: the one in place or, when that one is missing or
   * sealed under another key, the one a renewal's save left under its temporary name when a crash
   * stopped it before the cache's rename (put in place now). Undefined when there is none.
   */
  #openPersistedCache(key: KeyObject): OpenedCacheFile | undefined {
    const path = this.#store.cachePath;
    const sealed = this.#store.loadCache();
    let foreign: AgentError | undefined;
    if (sealed !== undefined)
      try {
        return openCache(sealed, key, path);
      } catch (error) {
        if (!(error instanceof AgentError && error.code === 'ERR_AGENT_CACHE_FOREIGN_KEY')) throw error;
        foreign = error;
      }
    let opened: OpenedCacheFile | undefined;
    try {
      const pending = this.#store.loadPendingCache();
      opened = pending === undefined ? undefined : openCache(pending, key, path);
    } catch {
      // Another key's, or a write cut short: the file in place is what there is.
    }
    if (opened === undefined) {
      if (foreign !== undefined) throw foreign;
      return undefined;
    }
    this.#store.completeCacheSave();
    this.#logger.info({ path }, 'finished saving the SVID cache the last run was stopped in the middle of');
    return opened;
  }

  /** The cache as it is now, sealed under `key`, in pieces to write as they come. */
  #sealedCache(key: KeyObject): Iterable<Uint8Array> {
    const { trusted, code, reason } = this.#reattest;
    return sealCache({ untrusted: trusted ? null : { code, reason }, cache: this.#cache.snapshot() }, key);
  }

  /** Seals the cache under the current agent key and writes it; a failure is logged, never fatal. */
  #persistCache(): void {
    const svid = this.#svid;
    if (svid === undefined) return;
    try {
      this.#store.saveCache(this.#sealedCache(svid.key));
    } catch (error) {
      this.#cacheWriteFailed(error as Error);
    }
  }

  #cacheWriteFailed(error: Error): void {
    this.#logger.warn(
      { reason: 'ERR_AGENT_CACHE_WRITE', path: this.#store.cachePath, err_message: error.message },
      'cannot persist the SVID cache: an agent restarted while the server is away would serve an older one, or nothing; free the disk or fix data_dir',
    );
  }

  #adopt(svid: StoredSvid, fresh: boolean): void {
    this.#svid = svid;
    this.#heldSvid = true;
    const issuedAt = notBefore(svid);
    const half = (svid.expiresAt - issuedAt) / 2;
    const jitter = (Math.random() * 2 - 1) * RENEW_JITTER * half;
    this.#renewAt = Math.floor(issuedAt + half + jitter);
    if (fresh) this.#logger.debug({ renew_at: this.#renewAt }, 'renewal scheduled');
  }

  /**
   * Keeps the Reattest stream open while the node holds a valid SVID, reconnecting with backoff
   * when it drops (the server restarted, the network failed).
   */
  async #runReattest(): Promise<void> {
    while (!this.#stopped) {
      const svid = this.#svid;
      if (svid === undefined || svid.expiresAt <= nowSeconds()) {
        await this.#sleepReattest(this.#config.sync_interval * 1000);
        continue;
      }
      const wait = this.#contact.waitMs('reattest');
      if (wait > 0) {
        await this.#sleepReattest(wait);
        continue;
      }
      // A stream the server ends without a challenge is no failure, but is not reopened at once either.
      let retryMs = this.#config.retry_initial * 1000;
      let lease: Lease | undefined;
      let target: ServerTarget | undefined;
      const moved = { value: false };
      try {
        target = await this.#servers.current();
        lease = await this.#lease(svid, target);
        if (await this.#reattestStream(lease, moved, target)) this.#contact.succeeded('reattest');
        if (moved.value) retryMs = 0;
        else if (!this.#stopped) this.#logger.info('the server closed the re-quote stream; reconnecting');
      } catch (error) {
        if (moved.value) {
          // Ended by us, for the connection that replaced its own: reopened there at once.
          retryMs = 0;
          this.#logger.debug('moving the re-quote stream to the new connection');
        } else {
          const e = lease === undefined ? asAgentError(error) : await lease.client.explain(error);
          lease?.failed(e);
          if (REATTEST_CODES.has(e.code) && svid === this.#svid) {
            this.#renewAt = 0;
            this.#wake?.();
          }
          if (target !== undefined && isServerAnswer(e)) this.#servers.reached(target);
          // The next server not tried yet in this pass is tried at once; a failed pass backs off.
          if (target !== undefined && failsOver(e) && this.#servers.failed(target, e) === 'moved')
            retryMs = 0;
          else if (!this.#stopped) retryMs = await this.#failed(e, 'reattest');
        }
      } finally {
        lease?.release();
      }
      await this.#sleepReattest(retryMs);
    }
  }

  /**
   * One Reattest stream until it ends; true when the server sent at least one challenge on it.
   * When the lease's connection is retired (a new agent SVID or bundle, a failed call) the stream
   * ends, `moved` set, so it is reopened on the connection that replaced it, authenticated with
   * the SVID in use; not while an answered re-quote waits for its verdict, which tells how much of
   * the event log the server now holds.
   */
  async #reattestStream(lease: Lease, moved: { value: boolean }, target: ServerTarget): Promise<boolean> {
    const call = lease.client.reattest();
    this.#reattestCall = call;
    // stop() may have run while this stream was being set up: it cancelled only the one before.
    if (this.#stopped) call.cancel();
    const inFlight = new Map<number, InFlight>();
    const moveIfIdle = () => {
      if (moved.value && inFlight.size === 0) call.cancel();
    };
    lease.onRetired(() => {
      moved.value = true;
      moveIfIdle();
    });
    let challenged = false;
    try {
      for await (const message of call as AsyncIterable<ReattestChallenge>) {
        this.#servers.reached(target);
        if (message.challenge) {
          challenged = true;
          await this.#answerReattest(call, message.challenge, inFlight);
        } else if (message.outcome) {
          this.#reattestOutcome(message.outcome, inFlight);
          moveIfIdle();
        }
      }
      return challenged;
    } finally {
      for (const pending of inFlight.values()) pending.release();
      if (this.#reattestCall === call) this.#reattestCall = undefined;
      call.cancel();
    }
  }

  /** A quote by the AK over the selection, and the event log appended since the server last verified it. */
  async #answerReattest(
    call: ClientDuplexStream<ReattestRequest, ReattestChallenge>,
    challenge: QuoteChallengeMessage,
    inFlight: Map<number, InFlight>,
  ): Promise<void> {
    // The server challenges again only once it is done with the last challenge, verdict sent or not.
    for (const pending of inFlight.values()) pending.release();
    inFlight.clear();
    const release = await this.#acquire();
    try {
      const ak = this.#store.loadAk();
      if (ak === undefined) throw new AgentError('ERR_AGENT_AK_UNKNOWN', 'no AK blobs in the data directory');
      const answer = await this.#tpm.answer(ak, {
        credentialBlob: new Uint8Array(),
        encryptedSecret: new Uint8Array(),
        nonce: new Uint8Array(challenge.nonce),
        selection: challenge.pcr_selection.map((s) => ({ hash: s.hash_alg, pcrs: s.pcrs })),
      });
      const log = answer.event_log;
      const known = this.#eventLogSent;
      // A log shorter than what the server holds is not a continuation: send it whole, and let the server judge.
      const prior = known !== undefined && known <= log.length ? known : 0;
      call.write({
        challenge_id: challenge.challenge_id,
        quote: answer.quote,
        signature: answer.signature,
        pcr_values: answer.pcr_values,
        event_log_prior_length: prior,
        event_log_tail: log.subarray(prior),
      });
      // A server that vanished without closing the stream must not hold renewal up for good.
      const timer = setTimeout(release, MAX_VERDICT_WAIT_MS);
      timer.unref();
      inFlight.set(challenge.challenge_id, {
        logLength: log.length,
        release: () => {
          clearTimeout(timer);
          release();
        },
      });
    } catch (error) {
      release();
      throw error;
    }
  }

  #reattestOutcome(outcome: ReattestOutcomeMessage, inFlight: Map<number, InFlight>): void {
    const answered = inFlight.get(outcome.challenge_id);
    inFlight.delete(outcome.challenge_id);
    if (outcome.trusted) {
      if (answered !== undefined) this.#eventLogSent = answered.logLength;
      this.#reattest.passed++;
      this.#trusted();
    } else {
      if (RESEND_LOG_CODES.has(outcome.code)) this.#eventLogSent = undefined;
      this.#reattest.failed++;
      this.#untrusted(outcome.code, outcome.reason);
      if (outcome.code === 'ERR_REATTEST_REBOOTED') {
        this.#mustAttest = true;
        this.#renewAt = 0;
        this.#wake?.();
      }
    }
    answered?.release();
  }

  #trusted(): void {
    Object.assign(this.#reattest, { trusted: true, code: '', reason: '' });
    if (this.#cache.resume()) {
      this.#logger.info('the server trusts this node again: serving identities');
      this.#syncWake?.();
    }
  }

  #untrusted(code: string, reason: string): void {
    Object.assign(this.#reattest, { trusted: false, code, reason });
    if (this.#cache.suspend())
      this.#logger.warn(
        { reason: code, err_message: reason },
        code === BANNED
          ? 'the server refuses this agent as banned: serving no identity until it is unbanned'
          : 'the server holds this node untrusted: serving no identity until a re-quote passes',
      );
  }

  /** Waits for the TPM lock; resolves to its release. */
  #acquire(): Promise<() => void> {
    let release: () => void = () => {};
    const held = new Promise<void>((resolve) => {
      release = resolve;
    });
    const previous = this.#tpmLock;
    this.#tpmLock = previous.then(() => held);
    return previous.then(() => release);
  }

  async #exclusive<T>(use: () => Promise<T>): Promise<T> {
    const release = await this.#acquire();
    try {
      return await use();
    } finally {
      release();
    }
  }

  #sleepReattest(ms: number): Promise<void> {
    if (this.#stopped) return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, ms);
      this.#reattestWake = () => {
        clearTimeout(timer);
        resolve();
      };
    });
  }

  #sleep(ms: number): Promise<void> {
    if (this.#stopped) return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, ms);
      this.#wake = () => {
        clearTimeout(timer);
        resolve();
      };
    });
  }
}

function workloadAttestors(config: AgentConfig): WorkloadAttestor[] {
  const { unix, systemd, k8s } = config.workload_attestors;
  const attestors: WorkloadAttestor[] = [];
  if (unix !== undefined) attestors.push(new UnixAttestor());
  if (systemd !== undefined) attestors.push(new SystemdAttestor());
  if (k8s !== undefined)
    attestors.push(
      new K8sAttestor({
        ...(k8s?.kubelet_url !== undefined ? { kubeletUrl: k8s.kubelet_url } : {}),
        ...(k8s?.ca_file !== undefined ? { kubeletCaPath: k8s.ca_file } : {}),
        ...(k8s?.skip_verify !== undefined ? { skipKubeletVerification: k8s.skip_verify } : {}),
        ...(k8s?.token_file !== undefined ? { tokenPath: k8s.token_file } : {}),
      }),
    );
  return attestors;
}

function closeServer(server: Server | undefined): Promise<void> {
  return new Promise((resolve) => (server ? server.close(() => resolve()) : resolve()));
}

/** The bundle's CA certificates, and where they came from, as one string: per array, computed once. */
const trustKeys = new WeakMap<readonly X509Certificate[], string>();

function trustKey(bundle: TrustBundle | undefined): string {
  if (bundle === undefined) return '';
  let key = trustKeys.get(bundle.authorities);
  if (key === undefined) {
    key = bundle.authorities.map((c) => c.raw.toString('base64')).join('\n');
    trustKeys.set(bundle.authorities, key);
  }
  return `${bundle.source.key}\n${bundle.source.location}\n${key}`;
}

function asAgentError(error: unknown): AgentError {
  return error instanceof AgentError ? error : new AgentError('ERR_AGENT_PROTOCOL', String(error));
}

function nowSeconds(): number {
  return Math.floor(Date.now() / 1000);
}

/** Unix seconds the SVID's certificate became valid. */
function notBefore(svid: StoredSvid): number {
  const leaf = svid.chain[0];
  return leaf ? Math.floor(new Date(leaf.validFrom).getTime() / 1000) : nowSeconds();
}

/** A fresh P-256 key and a CSR for it. The server names the agent; the CSR's ID is a placeholder. */
async function newCsr(trustDomain: string): Promise<{ key: KeyObject; csr: Buffer }> {
  const { privateKey } = newKeyPair('ec', { namedCurve: 'P-256' });
  const csr = await createCsr(
    { spiffeId: SpiffeId.parse(`spiffe://${trustDomain}/agent/csr`) },
    createKeySigner(privateKey),
  );
  return { key: privateKey, csr: Buffer.from(csr) };
}
