/**
 * One round of talking to the server for the workloads: entries changed since the last round
 * (incremental by cursor), the bundles, then new X.509-SVIDs for what is due, in batches of CSRs
 * for keys generated here. Subscribers hear once per round, after everything is in the cache.
 *
 * @module
 */
import { generateKeyPair, type KeyObject } from 'node:crypto';
import { setImmediate as nextTurn } from 'node:timers/promises';
import { promisify } from 'node:util';
import type { Logger } from 'pino';
import type { SyncCursorMessage } from '../agent-api/proto.js';
import { createCsr, createKeySigner, type SpiffeError } from '../spiffe/index.js';
import type { IssuedSvid, SvidCache } from './cache.js';
import type { AgentApiClient } from './client.js';
import { AgentError } from './errors.js';
import type { MetricsSink } from './metrics-sink.js';

/** CSRs per BatchNewX509SVID call: a round trip per hundred keeps each call short. */
const CSR_BATCH = 100;

const generateEcKey = promisify(generateKeyPair);

export interface SyncStats {
  syncs: number;
  full_syncs: number;
  /** Entries and deletions received over all syncs. */
  entries_received: number;
  svids_issued: number;
  last_sync: { full: boolean; entries: number; deleted: number; pages: number; revision: number } | null;
}

export class WorkloadSync {
  readonly #cache: SvidCache;
  readonly #logger: Logger;
  readonly #metrics: MetricsSink;
  #cursor: SyncCursorMessage | undefined;
  readonly stats: SyncStats = {
    syncs: 0,
    full_syncs: 0,
    entries_received: 0,
    svids_issued: 0,
    last_sync: null,
  };

  constructor(cache: SvidCache, logger: Logger, metrics: MetricsSink) {
    this.#cache = cache;
    this.#logger = logger;
    this.#metrics = metrics;
  }

  readonly #refusedBundle = (trustDomain: string, error: SpiffeError): void => {
    this.#logger.error(
      { trust_domain: trustDomain, reason: error.code, err_message: error.message },
      'federated bundle refused: workloads get no bundle of this trust domain until the server sends one this agent can use (bundle set there, or its next federation refresh)',
    );
  };

  /** One round; `stopping` is asked between batches, so an agent shutting down does not wait for thousands. */
  async run(client: AgentApiClient, stopping: () => boolean = () => false): Promise<void> {
    let changed = false;
    try {
      const sync = await client.fetchEntries(this.#cursor);
      changed = this.#cache.applyEntries(sync);
      this.#cursor = sync.cursor;
      this.stats.syncs++;
      if (sync.full) this.stats.full_syncs++;
      this.stats.entries_received += sync.entries.length + sync.deletedIds.length;
      this.stats.last_sync = {
        full: sync.full,
        entries: sync.entries.length,
        deleted: sync.deletedIds.length,
        pages: sync.pages,
        revision: sync.cursor.revision,
      };
      if (changed || sync.full)
        this.#logger.info(
          { sync: sync.full ? 'full' : 'incremental', entries: this.#cache.entryCount, pages: sync.pages },
          'entries synced',
        );
      const bundles = await client.fetchBundles();
      this.#metrics.bundleReceived();
      if (this.#cache.applyBundles(bundles, this.#refusedBundle)) {
        changed = true;
        this.#logger.info('bundle updated');
      }
      const due = await this.#cache.due(nowSeconds());
      const issuing = performance.now();
      for (let i = 0; i < due.length && !stopping(); i += CSR_BATCH) {
        const batch = await Promise.all(
          due.slice(i, i + CSR_BATCH).map(async (entry) => ({ entry, key: await newKey() })),
        );
        // One CSR per turn of the event loop. Built through @peculiar/x509 one cost about 3 ms and a
        // hundred at once stalled the Workload API for a third of a second; encoded directly it is
        // about 0.05 ms, mostly its signature, but a turn per CSR keeps a batch from ever adding up.
        const requests: { entry_id: string; csr: Buffer }[] = [];
        for (const { entry, key } of batch) {
          await nextTurn();
          requests.push({
            entry_id: entry.id,
            csr: Buffer.from(await createCsr({ spiffeId: entry.spiffeId }, createKeySigner(key))),
          });
        }
        const byId = new Map(batch.map((item) => [item.entry.id, item]));
        const response = await this.#metrics.timeIssue('x509', () => client.batchNewX509Svid(requests));
        const issued: IssuedSvid[] = [];
        for (const svid of response.svids) {
          const item = byId.get(svid.entry_id);
          if (item === undefined) continue;
          issued.push({
            entryId: item.entry.id,
            entryRevision: item.entry.revisionNumber,
            chain: svid.chain,
            expiresAt: svid.expires_at,
            key: item.key,
          });
        }
        await this.#cache.storeSvids(issued);
        this.stats.svids_issued += issued.length;
        changed = true;
      }
      if (due.length > 0)
        this.#logger.info(
          { svids: due.length, duration_ms: Math.round(performance.now() - issuing) },
          'workload X.509-SVIDs issued',
        );
    } catch (error) {
      // The entries the server knows differ from ours: start over with a full sync.
      if (error instanceof AgentError && error.code === 'ERR_AGENT_ENTRY_NOT_AUTHORIZED')
        this.#cursor = undefined;
      throw error;
    } finally {
      if (this.#cache.expire(nowSeconds())) changed = true;
      if (changed) this.#cache.notify();
    }
  }
}

/** A P-256 key for a workload SVID, generated on libuv's thread pool, off the event loop. */
async function newKey(): Promise<KeyObject> {
  return (await generateEcKey('ec', { namedCurve: 'P-256' })).privateKey;
}

function nowSeconds(): number {
  return Math.floor(Date.now() / 1000);
}
