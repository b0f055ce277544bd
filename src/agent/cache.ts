/**
 * The agent's SVID cache: the entries the server authorized this agent for, an X.509-SVID (with a
 * key generated here, never sent anywhere) for each, the bundles, and JWT-SVIDs minted on demand.
 * It is what the Workload API serves from (`WorkloadIdentityProvider`), so it answers without the
 * network: while the server is away, workloads keep their SVIDs until they expire. Its state can be
 * taken as a snapshot (which the agent persists, see cachefile.ts) and restored by a later run.
 *
 * @module
 */
import { createPrivateKey, createPublicKey, type KeyObject, X509Certificate } from 'node:crypto';
import { setImmediate as nextTurn } from 'node:timers/promises';
import type { EntryMessage, FetchBundlesResponse } from '../agent-api/proto.js';
import {
  BundleSet,
  SpiffeBundle,
  SpiffeError,
  SpiffeId,
  TrustDomain,
  verifyX509Svid,
  X509Bundle,
} from '../spiffe/index.js';
import type {
  CallerCredentials,
  Selector,
  WorkloadIdentities,
  WorkloadIdentityProvider,
  X509SvidMaterial,
} from '../workload-api/provider.js';
import type { EntrySync } from './client.js';
import { AgentError } from './errors.js';
import { attestWorkload, selectorKind, type WorkloadAttestor } from './workloadattestor/attestor.js';

/** SVIDs are renewed at half their life, moved by up to this fraction of the half either way. */
const ROTATE_JITTER = 0.1;
/**
 * Signature checks `due` makes before it lets the event loop turn: each is at most a parse and one to
 * three verifications (0.15–0.3 ms), so a CA change over thousands of SVIDs never stalls the Workload
 * API for more than a few milliseconds at a time.
 */
const CA_CHECKS_PER_TURN = 25;
/**
 * Answered SVIDs `storeSvids` stores before it lets the event loop turn: each is a certificate parse,
 * a key export and its CA check (about 0.2 ms, more with the garbage it leaves), so a batch of a
 * hundred in one turn was the longest stall of a CA rotation.
 */
const STORES_PER_TURN = 10;
/** JWT-SVIDs kept at most; the least recently minted go first (audiences are caller-chosen). */
const MAX_CACHED_JWTS = 10_000;
/**
 * Failures to mint a fresh JWT-SVID after which a cached one still valid is served instead: the
 * server unreachable, or failing itself (its HSM away, for one).
 */
const JWT_OUTAGE_CODES: ReadonlySet<string> = new Set(['ERR_AGENT_SERVER_UNAVAILABLE', 'ERR_AGENT_INTERNAL']);

export interface CachedEntry {
  readonly id: string;
  readonly spiffeId: SpiffeId;
  readonly selectors: readonly Selector[];
  readonly federatesWith: readonly string[];
  readonly hint: string;
  readonly revisionNumber: number;
  readonly createdAt: number;
  /** Unix seconds; 0 = never. */
  readonly expiresAt: number;
}

interface CachedSvid {
  /** The CA state (see caState) this SVID was last found signed under; checked again when it changes. */
  caCheckedFor: string;
  /**
   * The SHA-256 fingerprint of the active authority whose key was found to have signed the leaf; ''
   * until one has. Which CA signed a certificate never changes, so later checks start from it: a
   * parse and a verification spared per SVID at every CA state change (see signedUnder).
   */
  signedBy: string;
  readonly entryRevision: number;
  readonly material: X509SvidMaterial;
  /**
   * The leaf's validity, read once when stored. The parsed leaf itself is not kept: an OpenSSL
   * certificate object costs about 10 KiB of native memory, per cached SVID; the CA check (once per
   * CA state) parses it again from `material`.
   */
  readonly notBefore: number;
  /** Unix milliseconds. */
  readonly notAfterMs: number;
  readonly expiresAt: number;
  readonly rotateAt: number;
}

/** What the server answered for one entry's CSR, with the key the CSR was made for. */
export interface IssuedSvid {
  entryId: string;
  entryRevision: number;
  chain: readonly Uint8Array[];
  expiresAt: number;
  key: KeyObject;
}

/** What the cache tells the agent's metrics. */
export interface CacheObserver {
  /**
   * A Workload API lookup: `hit` when answered from the cache alone, `miss` when there was nothing
   * to serve or a JWT-SVID had to be minted by the server.
   */
  lookup(result: 'hit' | 'miss'): void;
  /** A workload SVID replaced by a new one. */
  rotated(kind: 'x509' | 'jwt'): void;
  /** `count` cached X.509-SVIDs checked against a CA state they had not been checked against. */
  caChecked(count: number): void;
  /** A workload attested without the on-demand selector `kind`, because no entry used it. */
  notComputed(kind: string): void;
}

const unobserved: CacheObserver = {
  lookup: () => {},
  rotated: () => {},
  caChecked: () => {},
  notComputed: () => {},
};

/** An entry as persisted: the fields of the server's entry message the cache uses. */
export type PersistedEntry = Pick<
  EntryMessage,
  | 'id'
  | 'spiffe_id'
  | 'selectors'
  | 'federates_with'
  | 'hint'
  | 'revision_number'
  | 'created_at'
  | 'expires_at'
>;

/** An X.509-SVID as persisted: DER chain (leaf first) and PKCS#8 key, base64. */
export interface PersistedSvid {
  readonly entry_id: string;
  readonly entry_revision: number;
  readonly chain: readonly string[];
  readonly key: string;
  readonly expires_at: number;
}

/**
 * What a restarted agent needs to serve as after a sync: entries, their SVIDs, the bundles. Entries
 * and SVIDs are iterables: the cache's own snapshot makes each one as it is iterated (see
 * {@link SvidCache.snapshot}); a file read back holds arrays.
 */
export interface CacheSnapshot {
  /** The own trust domain's SPIFFE bundle document as last synced; '' before the first sync. */
  readonly bundle: string;
  readonly federated: readonly { readonly trust_domain: string; readonly document: string }[];
  readonly entries: Iterable<PersistedEntry>;
  readonly svids: Iterable<PersistedSvid>;
}

/** What {@link SvidCache.restore} kept and dropped. */
export interface RestoreOutcome {
  entries: number;
  svids: number;
  /** SVIDs (or their entries) past expiry. */
  expired: number;
  /** SVIDs whose chain does not verify against the stored bundle, or that their entry no longer names. */
  unverified: number;
}

export type JwtMinter = (
  entryId: string,
  audience: readonly string[],
) => Promise<{ token: string; expiresAt: number }>;

export class SvidCache implements WorkloadIdentityProvider {
  readonly #trustDomain: TrustDomain;
  readonly #attestors: readonly WorkloadAttestor[];
  /** The attestors' on-demand selector kinds (see WorkloadAttestor.onDemand). */
  readonly #onDemand: readonly string[];
  /** Selector kinds the cached entries use; an on-demand kind is computed only while in here. */
  #usedKinds: ReadonlySet<string> = new Set();
  /** The on-demand kinds each selector list `attest` returned was attested without. */
  readonly #omitted = new WeakMap<readonly Selector[], readonly string[]>();
  readonly #mintJwt: JwtMinter;
  readonly #observer: CacheObserver;
  readonly #changed: () => void;
  readonly #listeners = new Set<() => void>();
  #entries = new Map<string, CachedEntry>();
  readonly #svids = new Map<string, CachedSvid>();
  /** Times in milliseconds. */
  readonly #jwts = new Map<string, { token: string; rotateAt: number; expiresAt: number }>();
  #bundle: SpiffeBundle;
  #bundleDocument = '';
  #activeAuthority: X509Certificate | undefined;
  #federated = new Map<string, { document: string; bundle: SpiffeBundle }>();
  /** Federated bundle documents refused, by trust domain: reported once, not parsed again. */
  #refusedFederated = new Map<string, string>();
  #suspended = false;

  constructor(options: {
    trustDomain: string;
    attestors: readonly WorkloadAttestor[];
    /** The bundle's X.509 roots until the first sync brings the full bundle. */
    bootstrapRoots: readonly X509Certificate[];
    mintJwt: JwtMinter;
    observer?: CacheObserver;
    /** Called on every change the Workload API hears of, before it hears: the agent persists then. */
    onChange?: () => void;
  }) {
    this.#trustDomain = TrustDomain.parse(options.trustDomain);
    this.#attestors = options.attestors;
    this.#onDemand = [...new Set(options.attestors.flatMap((a) => a.onDemand ?? []))];
    this.#mintJwt = options.mintJwt;
    this.#observer = options.observer ?? unobserved;
    this.#changed = options.onChange ?? (() => {});
    this.#bundle = new SpiffeBundle(this.#trustDomain, { x509Authorities: options.bootstrapRoots });
  }

  /** The own trust domain's bundle as last synced. */
  get bundle(): SpiffeBundle {
    return this.#bundle;
  }

  /** The CA certificate the server signs X.509-SVIDs with now, as last synced. */
  get activeAuthority(): X509Certificate | undefined {
    return this.#activeAuthority;
  }

  get entryCount(): number {
    return this.#entries.size;
  }

  /** Federated bundles of the last sync that were refused and left out (see applyBundles). */
  get refusedFederatedBundles(): number {
    return this.#refusedFederated.size;
  }

  get svidCount(): number {
    return this.#svids.size;
  }

  /** True while the server holds the node untrusted: no identity is served or minted. */
  get suspended(): boolean {
    return this.#suspended;
  }

  /**
   * Stops serving: every SVID and JWT-SVID is dropped (they were obtained through a node the server
   * no longer trusts) and subscribers are told, so open streams end with PermissionDenied.
   * Entries stay, so identities come back as soon as the node is trusted again. True when it was serving.
   */
  suspend(): boolean {
    if (this.#suspended) return false;
    this.#suspended = true;
    this.#svids.clear();
    this.#jwts.clear();
    this.notify();
    return true;
  }

  /** Serves again; SVIDs are issued anew by the next sync round. True when it was suspended. */
  resume(): boolean {
    if (!this.#suspended) return false;
    this.#suspended = false;
    this.#changed();
    return true;
  }

  /**
   * Leaves out the on-demand selector kinds no cached entry uses: entries match by containment, so
   * a selector no entry names changes no match. If an entry started using one while the attestors
   * ran, attests again with it. `attestAgain` tells when a later entry needs one.
   */
  async attest(caller: CallerCredentials): Promise<readonly Selector[]> {
    for (;;) {
      const omitted = this.#onDemand.filter((kind) => !this.#usedKinds.has(kind));
      const selectors = await attestWorkload(this.#attestors, caller.pid, new Set(omitted));
      if (omitted.some((kind) => this.#usedKinds.has(kind))) continue;
      if (omitted.length > 0) this.#omitted.set(selectors, omitted);
      for (const kind of omitted) this.#observer.notComputed(kind);
      return selectors;
    }
  }

  notComputed(selectors: readonly Selector[]): readonly string[] {
    return this.#omitted.get(selectors) ?? [];
  }

  attestAgain(selectors: readonly Selector[]): boolean {
    return this.notComputed(selectors).some((kind) => this.#usedKinds.has(kind));
  }

  identities(selectors: readonly Selector[]): WorkloadIdentities {
    const found = this.#identities(selectors);
    this.#observer.lookup(found.svids.length > 0 ? 'hit' : 'miss');
    return found;
  }

  #identities(selectors: readonly Selector[]): WorkloadIdentities {
    if (this.#suspended) return { svids: [], bundle: this.#bundle, federatedBundles: [] };
    const have = new Set(selectors);
    const now = nowSeconds();
    const matched = [...this.#entries.values()]
      .filter((e) => e.selectors.every((s) => have.has(s)) && (e.expiresAt === 0 || e.expiresAt > now))
      // The oldest entry is the default identity: adding an entry never changes a workload's default.
      .sort((a, b) => a.createdAt - b.createdAt || a.id.localeCompare(b.id));
    const svids: X509SvidMaterial[] = [];
    const federates = new Set<string>();
    for (const entry of matched) {
      const svid = this.#svids.get(entry.id);
      if (svid === undefined || svid.expiresAt <= now) continue;
      svids.push(svid.material);
      for (const td of entry.federatesWith) federates.add(td);
    }
    const federatedBundles = [...federates]
      .map((td) => this.#federated.get(td)?.bundle)
      .filter((b): b is SpiffeBundle => b !== undefined);
    return { svids, bundle: this.#bundle, federatedBundles };
  }

  async mintJwtSvid(spiffeId: SpiffeId, audience: readonly string[]): Promise<string> {
    if (this.#suspended)
      throw new AgentError(
        'ERR_AGENT_UNTRUSTED',
        'the server holds this node untrusted; no identity is served',
      );
    const key = `${spiffeId.toString()}\n${[...new Set(audience)].sort().join('\n')}`;
    const cached = this.#jwts.get(key);
    const now = Date.now();
    if (cached !== undefined && cached.rotateAt > now) {
      this.#observer.lookup('hit');
      return cached.token;
    }
    this.#observer.lookup('miss');
    const entry = [...this.#entries.values()]
      .filter((e) => e.spiffeId.equals(spiffeId))
      .sort((a, b) => a.createdAt - b.createdAt || a.id.localeCompare(b.id))[0];
    if (entry === undefined)
      throw new AgentError(
        'ERR_AGENT_STATE',
        `no entry for ${spiffeId.toString()} in the cache (removed since the caller was attested); ask again`,
      );
    let minted: { token: string; expiresAt: number };
    try {
      minted = await this.#mintJwt(entry.id, audience);
    } catch (error) {
      // The server is away (or cannot sign just now): a token still valid serves until it expires,
      // as the cached X.509-SVIDs do. A refusal is not an outage and reaches the caller.
      if (
        cached !== undefined &&
        cached.expiresAt > Date.now() &&
        error instanceof AgentError &&
        JWT_OUTAGE_CODES.has(error.code)
      )
        return cached.token;
      throw error;
    }
    if (this.#jwts.delete(key)) this.#observer.rotated('jwt');
    if (this.#jwts.size >= MAX_CACHED_JWTS) {
      const oldest = this.#jwts.keys().next().value;
      if (oldest !== undefined) this.#jwts.delete(oldest);
    }
    this.#jwts.set(key, {
      token: minted.token,
      rotateAt: now + (minted.expiresAt * 1000 - now) / 2,
      expiresAt: minted.expiresAt * 1000,
    });
    return minted.token;
  }

  subscribe(listener: () => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /** Applies one entry sync; true when the entries changed. */
  applyEntries(sync: EntrySync): boolean {
    const next = sync.full ? new Map<string, CachedEntry>() : new Map(this.#entries);
    for (const id of sync.deletedIds) next.delete(id);
    for (const message of sync.entries) next.set(message.id, entryIn(message));
    const changed =
      next.size !== this.#entries.size ||
      [...next].some(([id, e]) => this.#entries.get(id)?.revisionNumber !== e.revisionNumber);
    this.#entries = next;
    if (changed) this.#usedKinds = kindsOf(next);
    for (const id of this.#svids.keys()) if (!next.has(id)) this.#svids.delete(id);
    if (changed) {
      const ids = new Set([...next.values()].map((e) => e.spiffeId.toString()));
      for (const key of this.#jwts.keys()) if (!ids.has(key.split('\n')[0] ?? '')) this.#jwts.delete(key);
    }
    return changed;
  }

  /**
   * Applies the bundles; true when they changed. A federated bundle this agent cannot use (say an
   * older server stored one with a weak key) is left out, and `refused` hears of it once per
   * document: one partner's bundle must not stop the sync of this trust domain's own identities.
   * The last good bundle of that trust domain is not kept either: the server no longer vouches
   * for it.
   */
  applyBundles(
    response: FetchBundlesResponse,
    refused: (trustDomain: string, error: SpiffeError) => void = () => {},
  ): boolean {
    this.#activeAuthority =
      response.active_x509_authority.length > 0
        ? new X509Certificate(response.active_x509_authority)
        : undefined;
    let changed = false;
    if (response.bundle !== this.#bundleDocument) {
      this.#bundle = SpiffeBundle.parse(this.#trustDomain, response.bundle);
      this.#bundleDocument = response.bundle;
      changed = true;
    }
    const federated = new Map<string, { document: string; bundle: SpiffeBundle }>();
    const refusals = new Map<string, string>();
    for (const { trust_domain, document } of response.federated) {
      const known = this.#federated.get(trust_domain);
      if (known?.document === document) federated.set(trust_domain, known);
      else if (this.#refusedFederated.get(trust_domain) === document) refusals.set(trust_domain, document);
      else {
        const bundle = SpiffeBundle.parseOrRefusal(trust_domain, document);
        if (bundle instanceof SpiffeError) {
          refusals.set(trust_domain, document);
          refused(trust_domain, bundle);
        } else federated.set(trust_domain, { document, bundle });
        changed = true;
      }
    }
    if (federated.size !== this.#federated.size) changed = true;
    this.#federated = federated;
    this.#refusedFederated = refusals;
    return changed;
  }

  /**
   * Entries whose SVID must be (re)issued at `now` (unix seconds): none yet, past its rotation time,
   * its entry changed, or signed by a CA that no longer signs (CA rotation) or left the bundle.
   * The signatures are checked once per SVID and CA state (active authority and bundle roots), not
   * every round: which CA signed an SVID never changes, only what the agent trusts does.
   */
  async due(now: number): Promise<CachedEntry[]> {
    if (this.#suspended) return [];
    const ca = this.#caNow();
    const due: CachedEntry[] = [];
    let checked = 0;
    for (const entry of [...this.#entries.values()]) {
      if (entry.expiresAt > 0 && entry.expiresAt <= now) continue;
      const svid = this.#svids.get(entry.id);
      if (svid === undefined || svid.entryRevision !== entry.revisionNumber || now >= svid.rotateAt) {
        due.push(entry);
        continue;
      }
      if (svid.caCheckedFor === ca.state) continue;
      if (checked > 0 && checked % CA_CHECKS_PER_TURN === 0) await nextTurn();
      checked++;
      if (signedUnder(svid, ca)) svid.caCheckedFor = ca.state;
      else due.push(entry);
    }
    if (checked > 0) this.#observer.caChecked(checked);
    // Suspended while the checks yielded: nothing is to be issued.
    return this.#suspended ? [] : due;
  }

  /**
   * Stores freshly issued SVIDs (for entries still cached), letting the event loop turn every
   * {@link STORES_PER_TURN}. A leaf that does not parse rejects, with the SVIDs before it stored.
   */
  async storeSvids(issued: readonly IssuedSvid[]): Promise<void> {
    let ca = this.#caNow();
    for (const [index, item] of issued.entries()) {
      if (index > 0 && index % STORES_PER_TURN === 0) {
        await nextTurn();
        // The bundles may have changed meanwhile.
        ca = this.#caNow();
      }
      // Issued before the node became untrusted (perhaps while this yielded): not to be served.
      if (this.#suspended) return;
      const entry = this.#entries.get(item.entryId);
      const leafDer = item.chain[0];
      if (entry === undefined || entry.revisionNumber !== item.entryRevision || leafDer === undefined)
        continue;
      const leaf = new X509Certificate(leafDer);
      const svid = cachedSvid(
        entry,
        item.entryRevision,
        item.chain,
        new Uint8Array(item.key.export({ format: 'der', type: 'pkcs8' })),
        item.expiresAt,
        leaf,
      );
      // Checked now, with the leaf parsed anyway, rather than parsed again by the next `due`.
      if (signedUnder(svid, ca, leaf)) svid.caCheckedFor = ca.state;
      this.#observer.caChecked(1);
      if (this.#svids.has(item.entryId)) this.#observer.rotated('x509');
      this.#svids.set(item.entryId, svid);
    }
  }

  /** What SVIDs are checked against now: the active authority (if known) and the bundle's roots. */
  #caNow(): CaState {
    const roots = this.#bundle.x509Authorities;
    const signer = this.#activeAuthority;
    return {
      state: caState(signer, roots),
      signer,
      signerFingerprint: signer?.fingerprint256 ?? '',
      signerIsRoot: signer !== undefined && roots.some((root) => root.raw.equals(signer.raw)),
      roots,
    };
  }

  /** Drops SVIDs that expired by `now`; true when any did. */
  expire(now: number): boolean {
    let dropped = false;
    for (const [id, svid] of this.#svids)
      if (svid.expiresAt <= now) {
        this.#svids.delete(id);
        dropped = true;
      }
    return dropped;
  }

  /**
   * For the agent's health: the validity (unix seconds) of each SVID served, and how many entries
   * (not expired themselves) have no SVID.
   */
  validity(now: number): { served: { notBefore: number; expiresAt: number }[]; unserved: number } {
    const served = [...this.#svids.values()].map((svid) => ({
      notBefore: svid.notBefore,
      expiresAt: svid.expiresAt,
    }));
    const unserved = [...this.#entries.values()].filter(
      (entry) => !(entry.expiresAt > 0 && entry.expiresAt <= now) && !this.#svids.has(entry.id),
    ).length;
    return { served, unserved };
  }

  /**
   * Unix milliseconds the first X.509-SVID still valid at `nowMs` expires, by its certificate's
   * notAfter; undefined when none is (or while suspended, when none is served).
   */
  soonestExpiryMs(nowMs: number): number | undefined {
    let soonest: number | undefined;
    for (const svid of this.#svids.values()) {
      const at = svid.notAfterMs;
      if (at > nowMs && (soonest === undefined || at < soonest)) soonest = at;
    }
    return soonest;
  }

  /**
   * The next moment (unix seconds) after `after` something is due: a rotation or an expiry;
   * undefined if none. Events at or before `after` were the last round's to act on; one it could
   * not (an SVID the server would not renew) waits for the next interval instead of waking the
   * loop again at once.
   */
  nextEvent(after: number): number | undefined {
    let next: number | undefined;
    for (const svid of this.#svids.values())
      for (const at of [svid.rotateAt, svid.expiresAt])
        if (at > after && (next === undefined || at < next)) next = at;
    return next;
  }

  /**
   * The state to persist. JWT-SVIDs are left out: they are bearer tokens, and minted on demand.
   *
   * Entries and SVIDs are handed out one at a time as the snapshot is iterated, from the cache as
   * it is then, so iterate it at once (sealCache does). With a thousand SVIDs, a snapshot made whole
   * was megabytes alive at the same moment: promoted by the agent's small young generation, it
   * became old-space garbage at every round that changed anything, and full collections followed.
   */
  snapshot(): CacheSnapshot {
    const entries = this.#entries;
    const svids = this.#svids;
    return {
      bundle: this.#bundleDocument,
      federated: [...this.#federated].map(([trust_domain, { document }]) => ({ trust_domain, document })),
      entries: {
        *[Symbol.iterator]() {
          for (const e of entries.values())
            yield {
              id: e.id,
              spiffe_id: e.spiffeId.toString(),
              selectors: [...e.selectors],
              federates_with: [...e.federatesWith],
              hint: e.hint,
              revision_number: e.revisionNumber,
              created_at: e.createdAt,
              expires_at: e.expiresAt,
            };
        },
      },
      svids: {
        *[Symbol.iterator]() {
          for (const [entryId, svid] of svids)
            yield {
              entry_id: entryId,
              entry_revision: svid.entryRevision,
              chain: svid.material.chainDer.map(base64),
              key: base64(svid.material.keyPkcs8Der),
              expires_at: svid.expiresAt,
            };
        },
      },
    };
  }

  /**
   * Takes over what an earlier run persisted, before the first sync (which replaces it): the
   * entries not expired at `now` (unix seconds), the bundles, and each SVID that is still valid,
   * belongs to its entry's current revision and SPIFFE ID, holds the key of its certificate, and
   * verifies against `roots` (the agent's stored bundle). All or nothing for the rest: anything
   * malformed throws before the cache changes.
   */
  restore(snapshot: CacheSnapshot, roots: readonly X509Certificate[], now: number): RestoreOutcome {
    const entries = new Map<string, CachedEntry>();
    const expiredEntries = new Set<string>();
    for (const message of snapshot.entries) {
      const entry = entryIn(message);
      if (entry.expiresAt > 0 && entry.expiresAt <= now) expiredEntries.add(entry.id);
      else entries.set(entry.id, entry);
    }
    const bundle =
      snapshot.bundle === '' ? this.#bundle : SpiffeBundle.parse(this.#trustDomain, snapshot.bundle);
    // A refused federated bundle is left for the first sync to report (applyBundles).
    const federated = new Map<string, { document: string; bundle: SpiffeBundle }>();
    for (const { trust_domain, document } of snapshot.federated) {
      const bundle = SpiffeBundle.parseOrRefusal(trust_domain, document);
      if (!(bundle instanceof SpiffeError)) federated.set(trust_domain, { document, bundle });
    }
    const trusted = new BundleSet([new X509Bundle(this.#trustDomain, roots)]);
    const svids = new Map<string, CachedSvid>();
    let expired = expiredEntries.size;
    let unverified = 0;
    for (const item of snapshot.svids) {
      if (expiredEntries.has(item.entry_id)) continue;
      if (item.expires_at <= now) {
        expired++;
        continue;
      }
      const entry = entries.get(item.entry_id);
      const svid =
        entry !== undefined && entry.revisionNumber === item.entry_revision
          ? verifiedSvid(entry, item, trusted, now)
          : undefined;
      if (svid === undefined) unverified++;
      else svids.set(item.entry_id, svid);
    }
    this.#entries = entries;
    this.#usedKinds = kindsOf(entries);
    this.#svids.clear();
    for (const [id, svid] of svids) this.#svids.set(id, svid);
    this.#bundle = bundle;
    this.#bundleDocument = snapshot.bundle;
    this.#federated = federated;
    return { entries: entries.size, svids: svids.size, expired, unverified };
  }

  /** Tells every subscriber (the Workload API's streams) to send the state again, once it is persisted. */
  notify(): void {
    this.#changed();
    for (const listener of this.#listeners) listener();
  }
}

/**
 * What an SVID's signatures are checked against, as one string: the active authority's fingerprint
 * and the roots', in bundle order (a reordered bundle costs one needless round of checks, no more).
 */
function caState(signer: X509Certificate | undefined, roots: readonly X509Certificate[]): string {
  return [signer?.fingerprint256 ?? '', ...roots.map((root) => root.fingerprint256)].join(',');
}

/** A CA state (see caState) and what checking an SVID against it needs. */
interface CaState {
  readonly state: string;
  /** The authority that signs now, if the server named one. */
  readonly signer: X509Certificate | undefined;
  readonly signerFingerprint: string;
  /** The signer is itself one of `roots`. */
  readonly signerIsRoot: boolean;
  readonly roots: readonly X509Certificate[];
}

/**
 * True when the CA that signs now (if known) signed the leaf and the chain ends under one of the
 * roots. What an earlier check found (`svid.signedBy`) settles the signer's part without a parse: a
 * leaf another authority signed was not signed by this one (a CA rotation; a CA certificate reissued
 * over the same key would cost a needless re-issue, no more), and one this authority signed needs no
 * new verification by it. When the signer is itself a root, a lone leaf it signed is under a root
 * already. `leaf`: the leaf, when the caller has parsed it.
 */
function signedUnder(svid: CachedSvid, ca: CaState, leaf?: X509Certificate): boolean {
  const [leafDer, ...above] = svid.material.chainDer;
  if (leafDer === undefined) return false;
  let parsed = leaf;
  if (ca.signer !== undefined && svid.signedBy !== ca.signerFingerprint) {
    if (svid.signedBy !== '') return false;
    parsed ??= new X509Certificate(leafDer);
    if (!parsed.verify(ca.signer.publicKey)) return false;
    svid.signedBy = ca.signerFingerprint;
  }
  if (ca.signer !== undefined && ca.signerIsRoot && above.length === 0) return true;
  const top = above.at(-1);
  const topCert = top !== undefined ? new X509Certificate(top) : (parsed ?? new X509Certificate(leafDer));
  return ca.roots.some((root) => topCert.verify(root.publicKey));
}

/** Every selector kind the entries use. */
function kindsOf(entries: ReadonlyMap<string, CachedEntry>): ReadonlySet<string> {
  const kinds = new Set<string>();
  for (const entry of entries.values())
    for (const selector of entry.selectors) kinds.add(selectorKind(selector));
  return kinds;
}

function entryIn(message: PersistedEntry): CachedEntry {
  return {
    id: message.id,
    spiffeId: SpiffeId.parse(message.spiffe_id),
    selectors: message.selectors,
    federatesWith: message.federates_with,
    hint: message.hint,
    revisionNumber: message.revision_number,
    createdAt: message.created_at,
    expiresAt: message.expires_at,
  };
}

/** A cache slot for an SVID, due for rotation at half its life, moved by the jitter. */
function cachedSvid(
  entry: CachedEntry,
  entryRevision: number,
  chain: readonly Uint8Array[],
  keyPkcs8Der: Uint8Array,
  expiresAt: number,
  leaf: X509Certificate,
): CachedSvid {
  const issuedAt = Math.floor(new Date(leaf.validFrom).getTime() / 1000);
  const notAfterMs = new Date(leaf.validTo).getTime();
  const half = (expiresAt - issuedAt) / 2;
  const jitter = (Math.random() * 2 - 1) * ROTATE_JITTER * half;
  return {
    caCheckedFor: '',
    signedBy: '',
    entryRevision,
    notBefore: issuedAt,
    notAfterMs,
    expiresAt,
    // Whole seconds, as `due` is asked with: a fractional time would keep the sync loop waking
    // before `due` agrees, for up to a second of back-to-back rounds.
    rotateAt: Math.floor(issuedAt + half + jitter),
    material: {
      spiffeId: entry.spiffeId,
      chainDer: chain.map((c) => new Uint8Array(c)),
      keyPkcs8Der,
      ...(entry.hint !== '' ? { hint: entry.hint } : {}),
    },
  };
}

/**
 * A persisted SVID, if it still stands at `now`: its chain verifies against `trusted`, it names its
 * entry's SPIFFE ID, and the key is its certificate's. Anything else (damage included) drops it.
 */
function verifiedSvid(
  entry: CachedEntry,
  item: PersistedSvid,
  trusted: BundleSet,
  now: number,
): CachedSvid | undefined {
  try {
    const chain = item.chain.map((der) => new X509Certificate(Buffer.from(der, 'base64')));
    const leaf = chain[0];
    const { id } = verifyX509Svid(chain, trusted, { time: new Date(now * 1000) });
    if (leaf === undefined || !id.equals(entry.spiffeId)) return undefined;
    const keyDer = Buffer.from(item.key, 'base64');
    const publicDer = createPublicKey(createPrivateKey({ key: keyDer, format: 'der', type: 'pkcs8' })).export(
      {
        format: 'der',
        type: 'spki',
      },
    );
    if (!publicDer.equals(leaf.publicKey.export({ format: 'der', type: 'spki' }))) return undefined;
    const expiresAt = Math.floor(new Date(leaf.validTo).getTime() / 1000);
    return cachedSvid(
      entry,
      item.entry_revision,
      chain.map((c) => c.raw),
      new Uint8Array(keyDer),
      expiresAt,
      leaf,
    );
  } catch {
    return undefined;
  }
}

/** Base64 of `bytes`, read in place (Buffer.from(bytes) alone would copy them first). */
function base64(bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('base64');
}

function nowSeconds(): number {
  return Math.floor(Date.now() / 1000);
}
