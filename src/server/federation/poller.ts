/**
 * Keeps the federated bundles fresh: fetches each federation relationship's bundle endpoint when its
 * last bundle's `spiffe_refresh_hint` says so (SPIFFE Federation §4.2) and stores the bundle when it
 * changed. A failed fetch keeps the last good bundle (§6.2) and is retried with backoff, never later
 * than the hint. Relationships are listed again at every check, so added and removed ones take effect
 * without a restart.
 *
 * @module
 */
import type { Counter } from 'prom-client';
import { printableUrl } from '../../host/index.js';
import { SpiffeBundle, SpiffeError } from '../../spiffe/index.js';
import type { Clock } from '../clock.js';
import type { Datastore, FederationRelationship } from '../datastore/datastore.js';
import { BundleSequenceStaleError } from '../errors.js';
import type { Logger } from '../log.js';
import { FederationError } from './errors.js';
import { fetchFederatedBundle } from './fetch.js';

/**
 * Bounds on the refresh hint, in seconds: a foreign hint of 0 must not turn into a busy loop, and
 * one of a year must not leave a rotated-away CA trusted for a year.
 */
export const REFRESH_HINT_BOUNDS = { min: 5, max: 86_400, default: 300 } as const;
/** The first retry after a failure; each further failure doubles it, up to the refresh hint. */
const FIRST_RETRY_SECONDS = 1;
/** How often {@link FederationPoller.start} checks what is due. */
const CHECK_INTERVAL_MS = 1_000;
/** Who the audit log names for bundles the poller stores. */
export const FEDERATION_ACTOR = 'federation';

export interface FederationPollerOptions {
  list: () => Promise<FederationRelationship[]>;
  datastore: Pick<Datastore, 'getBundle' | 'setFederatedBundle'>;
  clock: Clock;
  logger: Logger;
  /** Per-fetch timeout. */
  timeoutMs?: number;
  /** https_web roots instead of Node's system roots (which honour NODE_EXTRA_CA_CERTS). */
  webCa?: string;
  /** Counts fetches by trust domain and result (updated, unchanged, or the refusal code). */
  fetches?: Counter<'trust_domain' | 'result'>;
}

interface Schedule {
  /** The relationship as scheduled (see {@link versionOf}): an edited one is fetched at once. */
  version: string;
  /** Unix ms at which the next fetch is due. */
  dueAt: number;
  failures: number;
}

/** The refresh interval in seconds for a bundle's hint (or the default when it has none). */
export function refreshSeconds(hint: number | undefined): number {
  if (hint === undefined) return REFRESH_HINT_BOUNDS.default;
  return Math.min(REFRESH_HINT_BOUNDS.max, Math.max(REFRESH_HINT_BOUNDS.min, hint));
}

export class FederationPoller {
  readonly #o: FederationPollerOptions;
  readonly #schedules = new Map<string, Schedule>();
  #timer: NodeJS.Timeout | undefined;
  #running: Promise<void> | undefined;

  constructor(options: FederationPollerOptions) {
    this.#o = options;
  }

  /** Checks now and then every second until {@link stop}. */
  start(): void {
    if (this.#timer) return;
    const check = () => {
      // A check still running (a slow endpoint, up to its timeout) is not overlapped.
      if (this.#running) return;
      this.#running = this.pollOnce().finally(() => {
        this.#running = undefined;
      });
    };
    this.#timer = setInterval(check, CHECK_INTERVAL_MS);
    check();
  }

  /** Stops checking and waits for a running check to finish. */
  async stop(): Promise<void> {
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = undefined;
    await this.#running;
  }

  /**
   * Lists the relationships once and fetches every one that is due; resolves when those fetches
   * are done. Never rejects: failures are logged and counted.
   */
  async pollOnce(): Promise<void> {
    let relationships: FederationRelationship[];
    try {
      relationships = await this.#o.list();
    } catch (error) {
      this.#o.logger.error({ err: error }, 'federation: cannot list the relationships; will retry');
      return;
    }
    const current = new Set(relationships.map((r) => r.trustDomain));
    for (const trustDomain of this.#schedules.keys()) {
      if (!current.has(trustDomain)) this.#schedules.delete(trustDomain);
    }
    const now = this.#o.clock.now();
    const due: Promise<void>[] = [];
    for (const relationship of relationships) {
      let schedule = this.#schedules.get(relationship.trustDomain);
      const version = versionOf(relationship);
      if (schedule === undefined || schedule.version !== version) {
        schedule = { version, dueAt: now, failures: 0 };
        this.#schedules.set(relationship.trustDomain, schedule);
      }
      if (now >= schedule.dueAt) due.push(this.#refresh(relationship, schedule));
    }
    await Promise.all(due);
  }

  async #refresh(relationship: FederationRelationship, schedule: Schedule): Promise<void> {
    const { trustDomain, bundleEndpointUrl: url } = relationship;
    let current: SpiffeBundle | undefined;
    try {
      const stored = await this.#o.datastore.getBundle(trustDomain);
      if (stored !== undefined && !stored.federated) {
        throw new FederationError(
          'ERR_FEDERATION_OWN_TRUST_DOMAIN',
          url,
          `${trustDomain} is this server's own trust domain; delete the relationship`,
        );
      }
      current = stored === undefined ? undefined : usableStored(relationship, stored.document);
      const fetched = await fetchFederatedBundle({
        trustDomain,
        bundleEndpointUrl: url,
        profile: relationship.profile,
        ...(relationship.endpointSpiffeId !== undefined
          ? { endpointSpiffeId: relationship.endpointSpiffeId }
          : {}),
        ...(current !== undefined ? { currentBundle: current } : {}),
        ...(this.#o.webCa !== undefined ? { webCa: this.#o.webCa } : {}),
        timeoutMs: this.#o.timeoutMs ?? 30_000,
      });
      refuseOlder(relationship, stored?.endpointSequence, fetched.sequenceNumber);
      const document = fetched.marshal();
      let result: 'updated' | 'unchanged' = 'unchanged';
      // Stored in the same normalised form `bundle set` writes, so equal content compares equal. An
      // operator's bundle the endpoint serves unchanged is taken over as fetched, so that its
      // sequence is known from then on.
      const adopt = stored?.endpointSequence === undefined && fetched.sequenceNumber !== undefined;
      if (stored?.document !== document || adopt) {
        const saved = await this.#o.datastore
          .setFederatedBundle(trustDomain, document, FEDERATION_ACTOR, fetched.sequenceNumber)
          .catch((error: unknown) => {
            // Another server stored a newer one while this one fetched: the same refusal as above.
            if (error instanceof BundleSequenceStaleError)
              refuseOlder(relationship, error.stored, fetched.sequenceNumber);
            throw error;
          });
        result = 'updated';
        this.#o.logger.info(
          {
            trust_domain: trustDomain,
            url: printableUrl(url),
            sequence: saved.sequence,
            spiffe_sequence: fetched.sequenceNumber?.toString(),
          },
          'federation: bundle updated',
        );
      }
      schedule.failures = 0;
      schedule.dueAt = this.#o.clock.now() + refreshSeconds(fetched.refreshHintSeconds) * 1000;
      this.#o.fetches?.inc({ trust_domain: trustDomain, result });
    } catch (error) {
      schedule.failures += 1;
      const retry = Math.min(
        FIRST_RETRY_SECONDS * 2 ** Math.min(schedule.failures - 1, 30),
        refreshSeconds(current?.refreshHintSeconds),
      );
      schedule.dueAt = this.#o.clock.now() + retry * 1000;
      const code = codeOf(error);
      this.#o.logger.warn(
        {
          trust_domain: trustDomain,
          url: printableUrl(url),
          code,
          error: error instanceof Error ? error.message : String(error),
          failures: schedule.failures,
          retry_in_seconds: retry,
        },
        'federation: bundle fetch failed; the last good bundle stays in use',
      );
      this.#o.fetches?.inc({ trust_domain: trustDomain, result: code });
    }
  }
}

/**
 * SPIFFE Federation §4.2: spiffe_sequence says which of two bundles is newer. One older than the
 * endpoint served before comes from a stale replica or cache and would bring back keys the foreign
 * trust domain has since removed; the last good bundle stays. An operator's `bundle set` is an
 * override the next fetch replaces whatever its sequence, so only fetched sequences are compared.
 */
function refuseOlder(
  relationship: FederationRelationship,
  storedSequence: bigint | undefined,
  fetchedSequence: bigint | undefined,
): void {
  if (storedSequence === undefined || fetchedSequence === undefined || fetchedSequence >= storedSequence)
    return;
  const td = relationship.trustDomain;
  throw new FederationError(
    'ERR_FEDERATION_STALE_BUNDLE',
    relationship.bundleEndpointUrl,
    `served ${td}'s bundle with spiffe_sequence ${fetchedSequence}, older than the ${storedSequence} it served before (a stale replica or cache?); the stored bundle stays in use. If ${td}'s servers were rebuilt and their sequence started over, store the bundle they serve now: ironroot-server bundle set --id ${td} --format spiffe --path FILE`,
  );
}

/**
 * The stored bundle, to authenticate an https_spiffe endpoint with and to compare against. One that
 * fails today's checks (an older server stored it, with an RSA key under 2048 bits say) cannot
 * authenticate anything; an https_web endpoint is fetched without it, and its answer replaces it.
 */
function usableStored(relationship: FederationRelationship, document: string): SpiffeBundle | undefined {
  const { trustDomain, bundleEndpointUrl: url } = relationship;
  const bundle = SpiffeBundle.parseOrRefusal(trustDomain, document);
  if (!(bundle instanceof SpiffeError)) return bundle;
  if (relationship.profile !== 'https_spiffe') return undefined;
  throw new FederationError(
    'ERR_FEDERATION_STORED_BUNDLE_REFUSED',
    url,
    `the stored bundle of ${trustDomain} fails this server's checks (${bundle.code}: ${bundle.message}), so it cannot authenticate this https_spiffe endpoint; set one that passes (bundle set --id ${trustDomain})`,
    { cause: bundle },
  );
}

/** What identifies an edit: updatedAt has whole seconds only, so the fields count too. */
function versionOf(r: FederationRelationship): string {
  return JSON.stringify([r.bundleEndpointUrl, r.profile, r.endpointSpiffeId ?? '', r.updatedAt]);
}

function codeOf(error: unknown): string {
  const code = (error as { code?: unknown } | undefined)?.code;
  return typeof code === 'string' ? code : 'ERR_UNKNOWN';
}
