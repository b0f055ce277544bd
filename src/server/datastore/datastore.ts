/**
 * What the server keeps, independent of where: SQLite by default, PostgreSQL for HA. Every write
 * commits (durably) before it resolves, and records who did what in the audit log in the same
 * transaction.
 *
 * @module
 */
import type { ServerError } from '../errors.js';

export interface Selector {
  type: string;
  value: string;
}

export interface RegistrationEntry {
  id: string;
  spiffeId: string;
  parentId: string;
  selectors: Selector[];
  x509SvidTtl: number;
  jwtSvidTtl: number;
  dnsNames: string[];
  admin: boolean;
  downstream: boolean;
  federatesWith: string[];
  hint: string;
  /** Unix seconds; 0 = never. */
  expiresAt: number;
  revisionNumber: number;
  createdAt: number;
}

export type NewEntry = Omit<RegistrationEntry, 'id' | 'revisionNumber' | 'createdAt'>;

export type SelectorMatch = 'exact' | 'subset' | 'superset' | 'any';

export interface EntryFilter {
  spiffeId?: string;
  parentId?: string;
  selectors?: { selectors: Selector[]; match: SelectorMatch };
  /** Entries that federate with all of these trust domains. */
  federatesWith?: string[];
}

export interface Page {
  /** Opaque token from the previous page; empty for the first. */
  token?: string;
  size?: number;
}

export interface EntryPage {
  entries: RegistrationEntry[];
  /** Empty when there are no more entries. */
  nextToken: string;
}

/**
 * Whether the node's last re-quote (continuous attestation) passed. A full attestation makes a node
 * trusted; a failed or missing re-quote makes it untrusted until one passes.
 */
export interface NodeTrust {
  state: 'trusted' | 'untrusted';
  /** The refusal code (e.g. ERR_ATTEST_EVENTLOG_REPLAY) while untrusted. */
  code?: string;
  reason?: string;
  /** JSON with more about the decision (e.g. the rules a profile evaluation applied). */
  details?: string;
  /** Unix seconds of the last change of state (or of reason while untrusted). */
  changedAt: number;
}

export interface AttestedNode {
  spiffeId: string;
  attestationType: string;
  /** Serial of the agent SVID the node holds: the one its calls are accepted with. */
  serialNumber: string;
  /**
   * Serial of the SVID its last renewal issued, until the agent first uses it: then it becomes
   * `serialNumber` and the certificate it replaced is refused (as SPIRE's new_cert_serial_number).
   */
  newSerialNumber?: string;
  expiresAt: number;
  /**
   * Key id of the CA key that signed the current agent SVID; absent for nodes last issued one before
   * the server recorded it. An agent whose SVID the active CA signed holds the bundle with that CA.
   */
  svidAuthority?: string;
  /** Whether a ban (kept apart from the node record, see NodeBan) names this node. */
  banned: boolean;
  selectors: Selector[];
  tpm?: {
    ekHash: string;
    /** Subject of the EK certificate's issuer; empty when the EK was admitted by its hash alone. */
    ekIssuer?: string;
    /** TPM2B_PUBLIC of the AK bound at attestation; renewals are quoted with it. */
    akPublic: Uint8Array;
    /** JSON of the last verified quote (see LastQuote in nodeattestor). */
    lastQuote?: Uint8Array;
    resetCount?: number;
    /**
     * The last verified measured-boot event log; re-quotes send only what was appended since. Read
     * only by `getNode(id, { eventLog: true })`: it is large, and nothing else needs it.
     */
    eventLog?: Uint8Array;
  };
  trust: NodeTrust;
  /** Full attestations of this node (renewals do not count). */
  attestationCount: number;
  createdAt: number;
}

/**
 * A node record to write: without `trust`, the node is trusted from now (a full attestation). Bans
 * are not part of it: they are set and lifted on their own, and outlive the record.
 */
export type NodeRecord = Omit<AttestedNode, 'trust' | 'banned'> & { trust?: NodeTrust };

/** What an agent SVID renewal writes on its node's record; nothing else of the record changes. */
export interface NodeRenewal {
  /** Serial of the agent SVID the renewal was admitted with: still the node's, or nothing is written. */
  admittedSerial: string;
  newSerialNumber: string;
  svidAuthority?: string;
  expiresAt: number;
  /** TPM renewals: the selectors and the evidence of the renewal's own quote. */
  tpm?: { selectors: Selector[]; lastQuote: Uint8Array; resetCount: number; eventLog: Uint8Array };
}

/**
 * A renewal is written only if, at that moment, the node exists, holds the admitted serial and is
 * trusted; otherwise nothing is written and `node` is what stands now (undefined: evicted).
 */
export type NodeRenewalOutcome =
  | { readonly renewed: true }
  | { readonly renewed: false; readonly node: AttestedNode | undefined };

/**
 * A ban on an agent ID. It lives apart from the node record, so it holds whether the node is
 * attested, evicted or not attested yet, until an operator lifts it.
 */
export interface NodeBan {
  spiffeId: string;
  /** The EK public-area hash a TPM node was banned by (`agent ban --ek-hash`), if it was. */
  ekHash?: string;
  /** Unix seconds. */
  bannedAt: number;
}

export interface JoinToken {
  tokenHash: string;
  spiffeId?: string;
  expiresAt: number;
}

/** A challenge's nonce as the datastore keeps it: by hashes only, never the values themselves. */
export interface IssuedNonce {
  /** SHA-256 of the nonce, hex. */
  nonceHash: string;
  /** SHA-256 of the credential-activation secret, hex; absent when the challenge is a quote only. */
  secretHash?: string;
  /** Unix milliseconds after which an answer is too late. */
  expiresAt: number;
}

/**
 * What consuming a nonce found: `fresh` (consumed now, in time), `expired` (consumed now, too late),
 * `replayed` (consumed before) or `unknown` (never issued, or pruned since).
 */
export type NonceConsumption =
  | { outcome: 'fresh'; secretHash?: string }
  | { outcome: 'expired' | 'replayed' | 'unknown' };

export interface AuditRecord {
  id: number;
  at: number;
  actor: string;
  action: string;
  objectType: string;
  objectId: string;
  detail: Record<string, unknown>;
}

/**
 * One CA key (X.509 CA or JWT signing key) in the journal, so a restart resumes rotation. At most one
 * key per authority is active and one prepared, in slots A and B; old keys stay, still published in
 * the bundle, until they have been expired for a day.
 */
export interface CaSlot {
  authority: 'x509' | 'jwt';
  slot: 'A' | 'B';
  /** Id of the key in the KeyManager. */
  keyId: string;
  /** prepared: in the bundle, not signing yet; active: signing; old: retired, still in the bundle. */
  state: 'prepared' | 'active' | 'old';
  /** SubjectPublicKeyInfo, DER. */
  publicKeyDer: Uint8Array;
  /** The CA certificate (X.509 authority only). */
  certificateDer?: Uint8Array;
  notBefore: number;
  notAfter: number;
  tainted: boolean;
}

/** A change to the CA journal and the own bundle, committed together. */
export interface CaChange {
  upsert: CaSlot[];
  remove: { authority: 'x509' | 'jwt'; keyId: string }[];
  bundle?: { trustDomain: string; document: string; sequence: number };
}

/** Who holds a named lease, until when (Unix ms by the clock of the server that took it). */
export interface Lease {
  name: string;
  holder: string;
  expiresAtMs: number;
}

export interface StoredBundle {
  trustDomain: string;
  /** The SPIFFE bundle document (JWKS), as served. */
  document: string;
  /** Equals the document's spiffe_sequence for the own bundle; grows with every change. */
  sequence: number;
  federated: boolean;
  updatedAt: number;
  /**
   * The document's spiffe_sequence when the federation poller took it from the trust domain's
   * bundle endpoint; absent when an operator set it (or the endpoint's document had none).
   */
  endpointSequence?: bigint;
}

export interface FederationRelationship {
  trustDomain: string;
  /** https:// URL of the foreign bundle endpoint. */
  bundleEndpointUrl: string;
  profile: 'https_web' | 'https_spiffe';
  /** The endpoint server's SPIFFE ID; present exactly when profile is https_spiffe. */
  endpointSpiffeId?: string;
  createdAt: number;
  updatedAt: number;
}

/** A relationship to write: the store sets the times. */
export type NewFederationRelationship = Omit<FederationRelationship, 'createdAt' | 'updatedAt'>;

/**
 * A bundle written with a relationship (`federation create|update --trust-domain-bundle-path`): the
 * SPIFFE bundle document of the relationship's trust domain, stored as setFederatedBundle would.
 */
export interface InitialBundle {
  document: string;
}

/**
 * What deleting a federated bundle does to the entries that federate with its trust domain, as
 * SPIRE's modes: `restrict` (the default) refuses while there are any, `dissociate` takes the trust
 * domain out of them, `delete` deletes them.
 */
export type BundleDeleteMode = 'restrict' | 'dissociate' | 'delete';

/** What the audit log says about entries and nodes after a position in it (see Datastore.changesSince). */
export interface AuditChangeLog {
  /** The id read up to: the next read starts after it. */
  head: number;
  /** Ids of the entries written since, in audit order, each once: created, updated or deleted. */
  entryIds: string[];
  /**
   * SPIFFE IDs of the nodes written since, each once: attested, renewed, serial promoted, trusted
   * or untrusted, banned, unbanned, evicted. A re-quote that changes no trust rewrites only the
   * node's quote state (`tpm.lastQuote`, `tpm.resetCount`, its event log) without a record.
   */
  nodeIds: string[];
  /**
   * True when records in the range can no longer be read (deleted from the log, or a log that
   * went back past `after`): the entries and nodes named are not all there is, so read every entry
   * again, and every node.
   */
  gap: boolean;
}

/** Who asks for a change, as recorded in the audit log (e.g. `uid:0`, `server`). */
export type Actor = string;

/** One entry of a batch: created, or the named error that refused it (e.g. EntryDuplicateError). */
export type EntryCreation = { entry: RegistrationEntry } | { error: ServerError };

export interface Datastore {
  createEntry(entry: NewEntry, actor: Actor): Promise<RegistrationEntry>;
  /**
   * Creates the entries in one transaction (one durable commit for the batch) and resolves to one
   * outcome per entry, in order: a duplicate (of a stored entry or of an earlier one in the batch)
   * is refused on its own while the others are created.
   */
  createEntries(entries: readonly NewEntry[], actor: Actor): Promise<EntryCreation[]>;
  getEntry(id: string): Promise<RegistrationEntry | undefined>;
  listEntries(filter: EntryFilter, page?: Page): Promise<EntryPage>;
  countEntries(filter: EntryFilter): Promise<number>;
  /** Replaces the entry's fields; with `expectedRevision`, only if nobody changed it meanwhile. */
  updateEntry(
    id: string,
    entry: NewEntry,
    actor: Actor,
    expectedRevision?: number,
  ): Promise<RegistrationEntry>;
  deleteEntry(id: string, actor: Actor): Promise<RegistrationEntry>;

  /**
   * Inserts or replaces the node's record (attestation and re-attestation). `alias`, if given, is a
   * node-alias entry created in the same transaction (a join token's SPIFFE ID), so the node never
   * exists without the identity its token promised; an identical entry already there is kept.
   */
  upsertNode(node: NodeRecord, actor: Actor, alias?: NewEntry): Promise<void>;
  getNode(spiffeId: string, options?: { eventLog?: boolean }): Promise<AttestedNode | undefined>;
  /** Every node, without event logs. */
  listNodes(): Promise<AttestedNode[]>;
  /**
   * Records an agent SVID renewal in one conditional write, so that whatever happened to the node
   * since the renewal was admitted (evicted, made untrusted by a re-quote, attested again) is never
   * overwritten by the renewal's older view of it.
   */
  renewNode(spiffeId: string, renewal: NodeRenewal, actor: Actor): Promise<NodeRenewalOutcome>;
  /** Forgets the node: it must attest again. A ban on its ID stays. */
  deleteNode(spiffeId: string, actor: Actor): Promise<AttestedNode>;
  /**
   * The agent presented the certificate its last renewal issued: `serial` becomes the node's
   * current serial and the one before it is refused from now on. False when `serial` is not the
   * node's new serial (any more).
   */
  promoteNodeSerial(spiffeId: string, serial: string, actor: Actor): Promise<boolean>;
  /** Bans the agent ID, attested or not; banning it again keeps the first ban. */
  banNode(ban: Omit<NodeBan, 'bannedAt'>, actor: Actor): Promise<NodeBan>;
  /** Lifts the ban on the ID; resolves to it, or undefined when there was none. */
  unbanNode(spiffeId: string, actor: Actor): Promise<NodeBan | undefined>;
  getNodeBan(spiffeId: string): Promise<NodeBan | undefined>;
  listNodeBans(): Promise<NodeBan[]>;
  /**
   * Records a re-quote's outcome: the trust (audited only when the state or the code changes) and,
   * after a passing re-quote, the quote and event log it verified. Resolves to the node as stored
   * and whether its trust changed. With `judged`, the attestation the verdict was made on, nothing
   * is written if the node attested again since (NodeAttestedAgainError): a verdict on the old AK and
   * boot says nothing about the new ones, and its evidence would replace theirs.
   */
  recordNodeTrust(
    spiffeId: string,
    update: {
      trust: NodeTrust;
      tpm?: { lastQuote: Uint8Array; resetCount: number; eventLog: Uint8Array };
      judged?: Pick<AttestedNode, 'attestationCount' | 'createdAt'>;
    },
    actor: Actor,
  ): Promise<{ node: AttestedNode; changed: boolean }>;

  createJoinToken(token: JoinToken, actor: Actor): Promise<void>;
  /** Removes and returns the token if it exists and has not expired at `now`; single use. */
  consumeJoinToken(tokenHash: string, now: number, actor: Actor): Promise<JoinToken | undefined>;

  issueNonce(nonce: IssuedNonce): Promise<void>;
  /**
   * Marks the nonce consumed at `now` (Unix ms) in one conditional write, so of two servers sharing
   * the store exactly one can consume it; a consumed nonce stays, to be recognised as a replay.
   */
  consumeNonce(nonceHash: string, now: number): Promise<NonceConsumption>;
  /** True when the nonce was issued and has been consumed. */
  nonceConsumed(nonceHash: string): Promise<boolean>;
  /** Deletes at most `limit` nonces that expired before `before` (Unix ms); resolves to how many. */
  pruneNonces(before: number, limit: number): Promise<number>;

  listCaSlots(): Promise<CaSlot[]>;
  /**
   * Writes CA journal rows, and optionally the bundle that goes with them, in one transaction: a crash
   * leaves either the old state or the new one. `action` names the step in the audit log. Every change
   * raises the journal version; with `expectedVersion`, the change is written only if the version is
   * still that (else CaJournalConflictError, nothing written). Resolves to the new version.
   */
  recordCaChange(change: CaChange, action: string, actor: Actor, expectedVersion?: number): Promise<number>;
  /** The CA journal's version: equal versions mean an equal journal and own bundle. */
  caJournalVersion(): Promise<number>;
  /**
   * Takes the lease `name` for `holder` until `now + ttlMs` when nobody holds it, its holder's time
   * is up at `now`, or `holder` holds it already (a renewal): one conditional write, so of servers
   * trying at once exactly one gets it. Resolves to the lease as it stands: `holder`'s when taken.
   */
  acquireLease(name: string, holder: string, now: number, ttlMs: number): Promise<Lease>;
  /** Gives the lease up, if `holder` still holds it. */
  releaseLease(name: string, holder: string): Promise<void>;

  getBundle(trustDomain: string): Promise<StoredBundle | undefined>;
  listBundles(): Promise<StoredBundle[]>;
  /**
   * Stores a federated trust domain's bundle; sequence grows by one. `endpointSequence` is given
   * when the bundle was fetched from the trust domain's endpoint (its spiffe_sequence), never for
   * one an operator set.
   */
  setFederatedBundle(
    trustDomain: string,
    document: string,
    actor: Actor,
    endpointSequence?: bigint,
  ): Promise<StoredBundle>;
  /**
   * Deletes a federated bundle; what happens to entries federating with its trust domain is
   * `mode`'s (see {@link BundleDeleteMode}). Each entry changed is audited as its own update or
   * deletion, in the same transaction.
   */
  deleteFederatedBundle(trustDomain: string, actor: Actor, mode?: BundleDeleteMode): Promise<void>;

  listFederationRelationships(): Promise<FederationRelationship[]>;
  getFederationRelationship(trustDomain: string): Promise<FederationRelationship | undefined>;
  /**
   * Stores a new relationship (FederationExistsError when the trust domain has one) and, if given,
   * its trust domain's bundle, in one transaction audited as federation.create (and bundle.set).
   */
  createFederationRelationship(
    relationship: NewFederationRelationship,
    actor: Actor,
    bundle?: InitialBundle,
  ): Promise<FederationRelationship>;
  /**
   * Replaces the relationship's fields (FederationNotFoundError when there is none) and, if given,
   * its trust domain's bundle, in one transaction audited as federation.update (and bundle.set).
   */
  updateFederationRelationship(
    relationship: NewFederationRelationship,
    actor: Actor,
    bundle?: InitialBundle,
  ): Promise<FederationRelationship>;
  /** Forgets the relationship (FederationNotFoundError when there is none); its stored bundle stays. */
  deleteFederationRelationship(trustDomain: string, actor: Actor): Promise<FederationRelationship>;

  listAudit(limit: number): Promise<AuditRecord[]>;
  /** The entries with these ids that exist, in no particular order. */
  getEntries(ids: readonly string[]): Promise<RegistrationEntry[]>;
  /**
   * The newest audit record's id (0 when there is none), once no transaction that could still
   * commit a record at or below it is running: entries read after this resolves reflect every
   * entry write audited up to that id. Start of a full read of the entries.
   */
  settledAuditHead(): Promise<number>;
  /**
   * Which entries and nodes the audit records after `after` name, and the id read up to: every
   * entry write and every node write but a quote's (see AuditChangeLog) audits one in its
   * transaction, so those not named are as they were at `after`.
   */
  changesSince(after: number): Promise<AuditChangeLog>;
  /**
   * A random id the store was given when its schema was first created, the same for every server
   * sharing it: entry-sync cursors name it, so one server's cursor is understood by another.
   */
  identity(): Promise<string>;
  /** Proves the store answers (readiness). */
  ping(): Promise<void>;
  close(): Promise<void>;
}
