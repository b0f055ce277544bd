/**
 * Where agent admission reads the node record from. The sync calls (two or three per agent per
 * round) read it from a copy kept in memory, `NodeCache`, which the entry journal's refresh keeps
 * current from the audit log before each call is admitted; attestation, renewal and re-quotes,
 * which need the node's TPM state, read the store.
 *
 * @module
 */
import type { AttestedNode, Datastore, Selector } from '../datastore/datastore.js';

/**
 * A node record as the sync calls need it. The TPM state is left out: a re-quote that changes no
 * trust rewrites it without an audit record, so a kept copy of it could be stale.
 */
export type SyncedNode = Readonly<Omit<AttestedNode, 'tpm' | 'selectors'>> & {
  readonly selectors: readonly Readonly<Selector>[];
};

/** What admission needs of a node record: who it is, which serials speak for it, its ban. */
export type AdmittedNodeFields = Pick<
  AttestedNode,
  'spiffeId' | 'serialNumber' | 'newSerialNumber' | 'banned'
>;

/** Node records by SPIFFE ID, for admission. */
export interface NodeSource<N extends AdmittedNodeFields> {
  /** The node as last known; undefined if it is not attested. */
  node(spiffeId: string): Promise<N | undefined>;
  /** The node as stored now, after a write this call made or lost to another. */
  storedNode(spiffeId: string): Promise<N | undefined>;
}

/** The store itself: every read is a read of the datastore. */
export function storedNodes(store: Datastore): NodeSource<AttestedNode> {
  const read = (spiffeId: string) => store.getNode(spiffeId);
  return { node: read, storedNode: read };
}

/**
 * More than an agent API has agents: with fewer places than agents syncing in turn, each would
 * push another out and every call would read the store again (as the certificate cache found).
 */
const MAX_KEPT_NODES = 16_384;

/**
 * Node records kept between calls. Every node write but a quote's appends an audit record naming
 * the node in its transaction, so the refresh that reads those records drops the copies they name
 * (`forget`), or all of them when the log has a gap it cannot bridge (`forgetAll`); a copy is read
 * again on its node's next call. A read that was still running when something was dropped is not
 * kept: it may have read the row before the write that dropped it.
 */
export class NodeCache implements NodeSource<SyncedNode> {
  readonly #store: Datastore;
  readonly #nodes = new Map<string, SyncedNode>();
  /** Moves on every drop, so a read that overlapped one knows it. */
  #drops = 0;
  #reads = 0;

  constructor(store: Datastore) {
    this.#store = store;
  }

  /** How many times a node was read from the store (not answered from a kept copy). */
  get reads(): number {
    return this.#reads;
  }

  async node(spiffeId: string): Promise<SyncedNode | undefined> {
    const kept = this.#nodes.get(spiffeId);
    if (kept !== undefined) return kept;
    const drops = this.#drops;
    this.#reads++;
    const stored = await this.#store.getNode(spiffeId);
    if (stored === undefined) return undefined;
    const { tpm: _quoteState, selectors, ...rest } = stored;
    const node: SyncedNode = Object.freeze({
      ...rest,
      selectors: Object.freeze(selectors.map((selector): Readonly<Selector> => Object.freeze(selector))),
    });
    if (drops === this.#drops) {
      if (this.#nodes.size >= MAX_KEPT_NODES) {
        const oldest = this.#nodes.keys().next();
        if (oldest.done !== true) this.#nodes.delete(oldest.value);
      }
      this.#nodes.set(spiffeId, node);
    }
    return node;
  }

  storedNode(spiffeId: string): Promise<SyncedNode | undefined> {
    this.forget([spiffeId]);
    return this.node(spiffeId);
  }

  /** Drops the copies of these nodes: the audit log says they were written. */
  forget(spiffeIds: readonly string[]): void {
    if (spiffeIds.length === 0) return;
    this.#drops++;
    for (const id of spiffeIds) this.#nodes.delete(id);
  }

  /** Drops every copy: what was written is not known. */
  forgetAll(): void {
    this.#drops++;
    this.#nodes.clear();
  }
}
