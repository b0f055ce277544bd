/**
 * The server's view of registration entries for entry sync: an in-memory copy of every entry, a
 * change journal (which entry changed or went away at which journal revision) and the
 * authorization walk (which entries an agent may issue SVIDs for).
 *
 * The datastore has per-entry revision numbers but no record of deletions and no global change
 * counter, so the journal is kept here: each refresh stamps what changed in the store with a new
 * journal revision. Every entry write appends an audit record naming the entry in its transaction,
 * so a refresh reads the audit records since the last one and reads again only the entries they
 * name, by id, in audit order: an entry found with a new revision number replaces the copy, one
 * no longer found is deleted. Without new records (or with node renewals, bans, tokens… only) a
 * refresh costs one or two small queries. Every entry is read (and compared with the copy) only on
 * the first refresh and when the audit log has a gap that cannot be bridged: records deleted from
 * it, or a log that went back (a store restored from a backup). An id missing because its
 * transaction is still running (PostgreSQL) is not such a gap: the datastore waits for it.
 *
 * The same records name the nodes written, so each refresh also drops the node records the sync
 * calls keep (`nodes`, see nodes.ts) for the nodes they name: a call admitted after a refresh
 * sees every ban, eviction, renewal and trust change committed before it.
 *
 * Cursors are portable between servers sharing one datastore: a cursor's `epoch` is the datastore's
 * identity and its `revision` the audit-log id its answer reflected (every entry as of that
 * record). Each change is stamped with the audit id of the refresh that saw it, never below the
 * id of its own audit record, so any server whose copy goes back to a cursor's revision sends at
 * least what changed after it (an entry stamped later than its record is sent again, which the
 * agent applies as no change). A cursor from before this server's first full read, or from
 * another datastore, gets a full sync.
 *
 * @module
 */
import { createHash } from 'node:crypto';
import type { Datastore, RegistrationEntry, Selector } from '../datastore/datastore.js';
import { NodeCache } from './nodes.js';

/** The store is read this many entries at a time. */
const LOAD_PAGE_SIZE = 1000;
/** Tombstones kept for incremental syncs; a cursor older than the oldest one dropped syncs in full. */
const MAX_TOMBSTONES = 50_000;
/**
 * Authorizations kept for reuse: a sync round asks for the same agent's several times (FetchEntries,
 * FetchBundles, BatchNewX509SVID), and the walk is the cost at tens of thousands of entries. Sized
 * for a fleet: an agent's next round, with nothing changed, answers from what its last one computed
 * (with fewer places than agents, agents syncing in turn pushed each other out and every round
 * walked again).
 */
const MAX_CACHED_AUTHORIZATIONS = 16_384;
/**
 * Entries all kept authorizations may name together (a few tens of bytes each): an alias every node
 * matches puts its whole subtree in every agent's authorization, which the count alone would not
 * bound.
 */
const MAX_CACHED_AUTHORIZED_ENTRIES = 1_000_000;
/** Stale places the change log may hold beyond twice its live ids before it is rebuilt. */
const LOG_SLACK = 4096;

export interface SyncCursor {
  epoch: string;
  revision: number;
  scope: string;
}

interface Journaled {
  entry: RegistrationEntry;
  /** Journal revision of the last change. */
  changed: number;
  /** Former SPIFFE IDs: entries parented to them lost their parent. */
  formerSpiffeIds: readonly string[];
  /** Former parents: agents under them must drop the entry. */
  formerParentIds: readonly string[];
}

interface Tombstone {
  changed: number;
  /** The entry's SPIFFE IDs and parents, last and former. */
  spiffeIds: readonly string[];
  parentIds: readonly string[];
}

/** What an agent is authorized for, at one journal revision. */
export interface Authorization {
  /** The authorized entries (node aliases themselves are not: they name nodes, not workloads). */
  readonly entries: ReadonlyMap<string, RegistrationEntry>;
  /** Digest of the IDs the entries hang from: the agent's own ID and its matching node aliases. */
  readonly scope: string;
  /**
   * Whether an entry parented to `id` would be this agent's: `id` is the agent's, a matching node
   * alias's, or an authorized entry's SPIFFE ID (whether or not anything hangs from it now).
   */
  readonly parents: { has(id: string): boolean };
  readonly revision: number;
}

/** An authorization as computed at `computedAt`, the same until `validUntil` (unix seconds). */
interface CachedAuthorization {
  authorization: Authorization;
  computedAt: number;
  /** When the first entry the walk kept (or an alias it matched) expires; Infinity if none does. */
  validUntil: number;
}

export type EntryChanges =
  | { full: true; entries: RegistrationEntry[]; cursor: SyncCursor }
  | { full: false; entries: RegistrationEntry[]; deletedIds: string[]; cursor: SyncCursor };

export class EntryJournal {
  readonly #store: Datastore;
  readonly #serverId: string;
  /** The datastore's identity, read with the first full load. */
  #epoch = '';
  /** Audit id at which the copy last changed. */
  #revision = 0;
  /** Cursors below this revision cannot be answered incrementally (before the first load, tombstones pruned). */
  #horizon = 0;
  /** Audit id the copy reflects: every entry as of that record. */
  #auditHead = -1;
  #loads = 0;
  #applied = 0;
  #entries = new Map<string, Journaled>();
  #tombstones = new Map<string, Tombstone>();
  /**
   * Ids of changed entries (kept or tombstoned) in journal-revision order, with those revisions:
   * an incremental sync looks only at the tail past its cursor, not at every entry. An id is
   * appended at each change; its older places are skipped, and dropped when the log is rebuilt.
   */
  #log: string[] = [];
  #logRevisions: number[] = [];
  /** Entries by parent SPIFFE ID, then by id; a parent is a key only while it has an entry. */
  #byParent = new Map<string, Map<string, RegistrationEntry>>();
  /** Node aliases (entries parented to the server) by each of their selectors, as `type:value`. */
  #aliasesBySelector = new Map<string, Set<RegistrationEntry>>();
  /** Node aliases without selectors: every node matches them. */
  #aliasesForAll = new Set<RegistrationEntry>();
  /** By agent ID and node selectors; emptied whenever the journal revision moves. */
  #authorized = new Map<string, CachedAuthorization>();
  /** Entries the kept authorizations name, together. */
  #authorizedEntries = 0;
  #walks = 0;
  #refreshing: Promise<void> | undefined;
  #nextRefresh: Promise<void> | undefined;
  /** The node records the sync calls admit agents by, kept current by each refresh. */
  readonly nodes: NodeCache;

  constructor(store: Datastore, serverId: string) {
    this.#store = store;
    this.#serverId = serverId;
    this.nodes = new NodeCache(store);
  }

  /** The datastore's identity: the epoch of every cursor this journal gives out. */
  get epoch(): string {
    return this.#epoch;
  }

  /** The audit id at which the copy last changed. */
  get revision(): number {
    return this.#revision;
  }

  /** How many times the copy was read from the store in full. */
  get loads(): number {
    return this.#loads;
  }

  /** How many entry changes were applied one by one, read by id. */
  get applied(): number {
    return this.#applied;
  }

  /** How many authorizations were computed (not answered from those kept). */
  get walks(): number {
    return this.#walks;
  }

  /**
   * Brings the copy (and the node copies) up to date with the store: everything committed before
   * the call is seen when it resolves. A refresh already running may have read the log before
   * that, so callers arriving meanwhile share the one that starts after it.
   */
  refresh(): Promise<void> {
    if (this.#nextRefresh !== undefined) return this.#nextRefresh;
    if (this.#refreshing === undefined) return this.#startRefresh();
    const start = () => this.#startRefresh();
    this.#nextRefresh = this.#refreshing.then(start, start);
    return this.#nextRefresh;
  }

  #startRefresh(): Promise<void> {
    this.#nextRefresh = undefined;
    const running = this.#refresh().finally(() => {
      if (this.#refreshing === running) this.#refreshing = undefined;
    });
    this.#refreshing = running;
    return running;
  }

  async #refresh(): Promise<void> {
    if (this.#auditHead < 0) return this.#load();
    const log = await this.#store.changesSince(this.#auditHead);
    if (log.gap) return this.#load();
    this.nodes.forget(log.nodeIds);
    if (log.entryIds.length > 0) await this.#apply(log.entryIds, log.head);
    this.#auditHead = log.head;
  }

  /** Reads every entry and stamps what differs from the copy. */
  async #load(): Promise<void> {
    this.#loads++;
    if (this.#epoch === '') this.#epoch = await this.#store.identity();
    // Entries read after the head settled reflect every write audited up to it; a write after it
    // may be read here too, and is applied again (no change) by the next refresh.
    const head = await this.#store.settledAuditHead();
    // After the head, not before: a node read while it was awaited may predate a write it covers.
    this.nodes.forgetAll();
    const first = this.#auditHead < 0;
    const loaded = new Map<string, RegistrationEntry>();
    let token = '';
    do {
      const page = await this.#store.listEntries({}, { token, size: LOAD_PAGE_SIZE });
      for (const entry of page.entries) loaded.set(entry.id, entry);
      token = page.nextToken;
    } while (token !== '');
    const next = head;
    let changed = false;
    const entries = new Map<string, Journaled>();
    for (const [id, entry] of loaded) {
      const known = this.#entries.get(id);
      if (known !== undefined && known.entry.revisionNumber === entry.revisionNumber) {
        entries.set(id, known);
        continue;
      }
      changed = true;
      this.#tombstones.delete(id);
      entries.set(id, journaled(entry, known, next));
    }
    for (const [id, known] of this.#entries) {
      if (loaded.has(id)) continue;
      changed = true;
      this.#tombstones.set(id, tombstone(known, next));
    }
    this.#pruneTombstones();
    // Before the first load nothing is known; and a log that did not move past what the copy had
    // (records deleted, a store restored) cannot say which cursors saw these changes.
    if (first) this.#horizon = head;
    else if (changed && head <= this.#auditHead) this.#horizon = head + 1;
    this.#auditHead = head;
    if (!changed && !first) return;
    this.#revision = next;
    this.#entries = entries;
    this.#byParent = new Map();
    this.#aliasesBySelector = new Map();
    this.#aliasesForAll = new Set();
    for (const { entry } of entries.values()) this.#index(entry);
    this.#rebuildLog();
    this.#authorized.clear();
  }

  /**
   * Reads the named entries again, in order: a new revision replaces the copy, a missing one goes.
   * Changes are stamped `head`, the audit id read up to.
   */
  async #apply(ids: readonly string[], head: number): Promise<void> {
    const current = new Map((await this.#store.getEntries(ids)).map((entry) => [entry.id, entry]));
    const next = head;
    let changed = false;
    for (const id of ids) {
      const entry = current.get(id);
      const known = this.#entries.get(id);
      // Created and deleted since the last refresh, or written again with what the copy has.
      if (entry === undefined ? known === undefined : known?.entry.revisionNumber === entry.revisionNumber)
        continue;
      changed = true;
      this.#applied++;
      if (known !== undefined) this.#unindex(known.entry);
      this.#log.push(id);
      this.#logRevisions.push(next);
      if (entry === undefined) {
        this.#entries.delete(id);
        if (known !== undefined) this.#tombstones.set(id, tombstone(known, next));
        continue;
      }
      this.#tombstones.delete(id);
      this.#entries.set(id, journaled(entry, known, next));
      this.#index(entry);
    }
    if (!changed) return;
    this.#pruneTombstones();
    if (this.#log.length > 2 * (this.#entries.size + this.#tombstones.size) + LOG_SLACK) this.#rebuildLog();
    this.#revision = next;
    this.#authorized.clear();
  }

  /** The change log from the entries and tombstones kept: each id once, at its last change. */
  #rebuildLog(): void {
    const all: [number, string][] = [];
    for (const [id, kept] of this.#entries) all.push([kept.changed, id]);
    for (const [id, gone] of this.#tombstones) all.push([gone.changed, id]);
    all.sort((a, b) => a[0] - b[0]);
    this.#log = all.map(([, id]) => id);
    this.#logRevisions = all.map(([revision]) => revision);
  }

  #index(entry: RegistrationEntry): void {
    const siblings = this.#byParent.get(entry.parentId);
    if (siblings === undefined) this.#byParent.set(entry.parentId, new Map([[entry.id, entry]]));
    else siblings.set(entry.id, entry);
    if (entry.parentId !== this.#serverId) return;
    if (entry.selectors.length === 0) this.#aliasesForAll.add(entry);
    for (const selector of entry.selectors) {
      const key = `${selector.type}:${selector.value}`;
      const aliases = this.#aliasesBySelector.get(key);
      if (aliases === undefined) this.#aliasesBySelector.set(key, new Set([entry]));
      else aliases.add(entry);
    }
  }

  /** Takes out `entry`, the very object #index was given. */
  #unindex(entry: RegistrationEntry): void {
    const siblings = this.#byParent.get(entry.parentId);
    siblings?.delete(entry.id);
    if (siblings?.size === 0) this.#byParent.delete(entry.parentId);
    if (entry.parentId !== this.#serverId) return;
    this.#aliasesForAll.delete(entry);
    for (const selector of entry.selectors) {
      const key = `${selector.type}:${selector.value}`;
      const aliases = this.#aliasesBySelector.get(key);
      aliases?.delete(entry);
      if (aliases?.size === 0) this.#aliasesBySelector.delete(key);
    }
  }

  #pruneTombstones(): void {
    if (this.#tombstones.size <= MAX_TOMBSTONES) return;
    // Map iteration is insertion order: the oldest tombstones go first.
    for (const [id, tombstone] of this.#tombstones) {
      if (this.#tombstones.size <= MAX_TOMBSTONES) break;
      this.#horizon = Math.max(this.#horizon, tombstone.changed);
      this.#tombstones.delete(id);
    }
  }

  /**
   * The entries parented to `agentId`, to the node aliases (entries parented to the server) whose
   * selectors are all among `nodeSelectors`, and their descendants, recursively. Entries past their
   * `expiresAt` (unix seconds `now`) are left out, and so is what hangs from them.
   */
  authorize(agentId: string, nodeSelectors: readonly Selector[], now: number): Authorization {
    const have = nodeSelectors.map((s) => `${s.type}:${s.value}`);
    const key = JSON.stringify([agentId, [...have].sort()]);
    const cached = this.#authorized.get(key);
    // Time only moves entries out (by expiry); a clock set back recomputes too.
    if (cached !== undefined && now >= cached.computedAt && now < cached.validUntil)
      return cached.authorization;
    const walked = this.#walk(agentId, new Set(have), now);
    this.#walks++;
    this.#keep(key, { ...walked, computedAt: now });
    return walked.authorization;
  }

  #keep(key: string, computed: CachedAuthorization): void {
    // Every journal change empties the map: nothing kept is nothing counted.
    if (this.#authorized.size === 0) this.#authorizedEntries = 0;
    this.#forget(key);
    const size = computed.authorization.entries.size;
    // Map iteration is insertion order, and a hit is not re-inserted: the oldest computed goes first.
    for (const oldest of this.#authorized.keys()) {
      if (
        this.#authorized.size < MAX_CACHED_AUTHORIZATIONS &&
        this.#authorizedEntries + size <= MAX_CACHED_AUTHORIZED_ENTRIES
      )
        break;
      this.#forget(oldest);
    }
    this.#authorized.set(key, computed);
    this.#authorizedEntries += size;
  }

  #forget(key: string): void {
    const kept = this.#authorized.get(key);
    if (kept === undefined) return;
    this.#authorized.delete(key);
    this.#authorizedEntries -= kept.authorization.entries.size;
  }

  #walk(agentId: string, have: ReadonlySet<string>, now: number): Omit<CachedAuthorization, 'computedAt'> {
    let validUntil = Number.POSITIVE_INFINITY;
    const live = (entry: RegistrationEntry): boolean => {
      if (entry.expiresAt === 0) return true;
      if (entry.expiresAt <= now) return false;
      validUntil = Math.min(validUntil, entry.expiresAt);
      return true;
    };
    // Candidate aliases share a selector with the node (or have none); each must have all of its own.
    const candidates = new Set(this.#aliasesForAll);
    for (const selector of have)
      for (const alias of this.#aliasesBySelector.get(selector) ?? []) candidates.add(alias);
    const roots = [agentId];
    for (const alias of candidates)
      if (alias.selectors.every((s) => have.has(`${s.type}:${s.value}`)) && live(alias))
        roots.push(alias.spiffeId);
    const scope = createHash('sha256')
      .update([...new Set(roots)].sort().join('\n'))
      .digest('hex');
    const entries = new Map<string, RegistrationEntry>();
    const visited = new Set<string>();
    // Breadth first through an index, not shift(): shifting a long array copies it every time. Only
    // IDs with entries under them are queued: most entries are leaves, and a set and a queue as long
    // as the entries made the walk grow faster than them.
    const queue = [...roots];
    for (let next = 0; next < queue.length; next++) {
      const id = queue[next] as string;
      if (visited.has(id)) continue;
      visited.add(id);
      for (const child of this.#byParent.get(id)?.values() ?? []) {
        if (!live(child)) continue;
        entries.set(child.id, child);
        if (this.#byParent.has(child.spiffeId)) queue.push(child.spiffeId);
      }
    }
    const parents = parentIds(roots, entries);
    return { authorization: { entries, scope, parents, revision: this.#revision }, validUntil };
  }

  /** What an agent holding `cursor` must apply to match `authorization`. */
  changes(cursor: SyncCursor | undefined, authorization: Authorization): EntryChanges {
    const now: SyncCursor = { epoch: this.#epoch, revision: this.#auditHead, scope: authorization.scope };
    const full = (): EntryChanges => ({
      full: true,
      entries: [...authorization.entries.values()],
      cursor: now,
    });
    if (
      cursor === undefined ||
      cursor.epoch !== this.#epoch ||
      cursor.scope !== authorization.scope ||
      cursor.revision > this.#auditHead ||
      cursor.revision < this.#horizon
    )
      return full();
    const upserts: RegistrationEntry[] = [];
    const deletedIds: string[] = [];
    const seen = new Set<string>();
    /** SPIFFE IDs of entries changed or deleted since the cursor, former ones included. */
    const movedIds = new Set<string>();
    /** Parents (last and former) of the changes not sent as this agent's. */
    const unsentParents: (readonly string[])[] = [];
    for (let at = firstAfter(this.#logRevisions, cursor.revision); at < this.#log.length; at++) {
      const id = this.#log[at] as string;
      if (seen.has(id)) continue;
      seen.add(id);
      const journaled = this.#entries.get(id);
      if (journaled !== undefined) {
        if (journaled.changed <= cursor.revision) continue;
        // A changed parent moves its whole subtree in or out; only a full sync says which.
        if (
          this.#byParent.has(journaled.entry.spiffeId) ||
          journaled.formerSpiffeIds.some((former) => this.#byParent.has(former))
        )
          return full();
        movedIds.add(journaled.entry.spiffeId);
        for (const former of journaled.formerSpiffeIds) movedIds.add(former);
        if (authorization.entries.has(id)) upserts.push(journaled.entry);
        // Entries that never were this agent's are none of its business.
        else if (journaled.formerParentIds.some((former) => authorization.parents.has(former)))
          deletedIds.push(id);
        else unsentParents.push([journaled.entry.parentId, ...journaled.formerParentIds]);
        continue;
      }
      const tombstone = this.#tombstones.get(id);
      // Neither kept nor tombstoned: a pruned tombstone, older than the horizon checked above.
      if (tombstone === undefined || tombstone.changed <= cursor.revision) continue;
      if (tombstone.spiffeIds.some((former) => this.#byParent.has(former))) return full();
      for (const former of tombstone.spiffeIds) movedIds.add(former);
      if (tombstone.parentIds.some((former) => authorization.parents.has(former))) deletedIds.push(id);
      else unsentParents.push(tombstone.parentIds);
    }
    // A change under a parent that itself moved or went since the cursor may have been this agent's
    // through that parent (a subtree deleted or moved away whole); the parents now cannot tell.
    if (unsentParents.some((parents) => parents.some((parent) => movedIds.has(parent)))) return full();
    return { full: false, entries: upserts, deletedIds, cursor: now };
  }
}

/** Index of the first of the ascending `revisions` above `revision` (their length if none is). */
function firstAfter(revisions: readonly number[], revision: number): number {
  let low = 0;
  let high = revisions.length;
  while (low < high) {
    const middle = (low + high) >>> 1;
    if ((revisions[middle] as number) <= revision) low = middle + 1;
    else high = middle;
  }
  return low;
}

/** The journal's record of `entry`, changed at `revision`, replacing `known`. */
function journaled(entry: RegistrationEntry, known: Journaled | undefined, revision: number): Journaled {
  return {
    entry,
    changed: revision,
    // Kept across changes: an agent may have missed several of them.
    formerSpiffeIds: former(known?.formerSpiffeIds, known?.entry.spiffeId, entry.spiffeId),
    formerParentIds: former(known?.formerParentIds, known?.entry.parentId, entry.parentId),
  };
}

function tombstone(known: Journaled, revision: number): Tombstone {
  return {
    changed: revision,
    spiffeIds: [known.entry.spiffeId, ...known.formerSpiffeIds],
    parentIds: [known.entry.parentId, ...known.formerParentIds],
  };
}

function former(
  known: readonly string[] | undefined,
  previous: string | undefined,
  current: string,
): readonly string[] {
  const all = new Set(known ?? []);
  if (previous !== undefined && previous !== current) all.add(previous);
  all.delete(current);
  return [...all];
}

/**
 * The IDs an entry can hang from and be authorized: the walk's roots and every authorized entry's
 * SPIFFE ID. Built on first use: only an incremental answer with changes outside the authorization
 * asks.
 */
function parentIds(
  roots: readonly string[],
  entries: ReadonlyMap<string, RegistrationEntry>,
): { has(id: string): boolean } {
  let ids: Set<string> | undefined;
  return {
    has(id) {
      if (ids === undefined) {
        ids = new Set(roots);
        for (const entry of entries.values()) ids.add(entry.spiffeId);
      }
      return ids.has(id);
    },
  };
}
