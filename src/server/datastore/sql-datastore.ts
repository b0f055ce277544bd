/**
 * The Datastore over Kysely. The same code serves SQLite and PostgreSQL: queries stay within what
 * both dialects share, and numbers read back go through Number() because pg returns bigint as text.
 *
 * @module
 */
import { createHash, randomUUID } from 'node:crypto';
import type { ExpressionBuilder, Kysely, Transaction } from 'kysely';
import { type Clock, nowSeconds } from '../clock.js';
import {
  AgentNotFoundError,
  BundleInUseError,
  BundleNotFoundError,
  BundleSequenceStaleError,
  CaJournalConflictError,
  DatastoreError,
  EntryDuplicateError,
  EntryNotFoundError,
  EntryRevisionMismatchError,
  FederationExistsError,
  FederationNotFoundError,
  NodeAttestedAgainError,
  ServerError,
} from '../errors.js';
import type {
  Actor,
  AttestedNode,
  AuditChangeLog,
  AuditRecord,
  BundleDeleteMode,
  CaChange,
  CaSlot,
  Datastore,
  EntryCreation,
  EntryFilter,
  EntryPage,
  FederationRelationship,
  InitialBundle,
  IssuedNonce,
  JoinToken,
  Lease,
  NewEntry,
  NewFederationRelationship,
  NodeBan,
  NodeRecord,
  NodeRenewal,
  NodeRenewalOutcome,
  NodeTrust,
  NonceConsumption,
  Page,
  RegistrationEntry,
  Selector,
  StoredBundle,
} from './datastore.js';
import type {
  AttestedNodeRow,
  AuditLogRow,
  BannedNodeRow,
  BundleRow,
  Database,
  FederatesWithRow,
  FederationRelationshipRow,
  RegistrationEntryRow,
  SelectorRow,
} from './tables.js';

const DEFAULT_PAGE_SIZE = 500;
const MAX_PAGE_SIZE = 1000;
/**
 * Rows per multi-row statement in a batch: 14 columns × 500 stays well under the bound-parameter
 * limits (SQLite 32766, PostgreSQL 65535) while one statement carries the work of hundreds.
 */
const BATCH_ROWS = 500;
/** Audit records read per query when looking for entry changes. */
const AUDIT_PAGE_SIZE = 10_000;

type Db = Kysely<Database> | Transaction<Database>;

/** The rows a batch of new entries adds, as their tables hold them. */
export interface EntryRows {
  entries: RegistrationEntryRow[];
  selectors: SelectorRow[];
  federatesWith: FederatesWithRow[];
  audit: Omit<AuditLogRow, 'id'>[];
}

/** A stored entry's identity, as the unique constraint on registration entries keeps it. */
export type EntryIdentityRow = Pick<RegistrationEntryRow, 'id' | 'spiffe_id' | 'parent_id' | 'selectors_key'>;

/**
 * A batch of new entries' reads and writes on the connection of the transaction in progress, faster
 * than the query builder makes them (see sqlite.ts: prepared statements, built once). Without it,
 * queries with a parameter per SPIFFE ID and multi-row inserts.
 */
export interface EntryBatchStatements {
  /** Stored entries whose SPIFFE ID is one of `spiffeIds`. */
  identities(spiffeIds: readonly string[]): EntryIdentityRow[];
  /** Writes rows of the batch (one entry's at a time). */
  write(rows: EntryRows): void;
}

/**
 * Resolves once every transaction running when it was called has ended (committed or rolled
 * back). Given by stores whose writers commit out of id order (PostgreSQL: several connections and
 * servers take audit ids from one sequence, and a later id may commit first); without one, audit
 * ids commit in order (SQLite: one writer at a time, and a rollback frees its AUTOINCREMENT id).
 */
export type WriterSettler = (db: Kysely<Database>) => Promise<void>;

/** A node's rows as the per-call read takes them: no event log, selectors by type then value. */
export interface NodeRows {
  node: NodeColumns;
  selectors: { type: string; value: string }[];
  banned: boolean;
}

/**
 * The reads every agent API call makes (its node, and the audit log's head for the entry journal),
 * through statements prepared once (see sqlite.ts): building, compiling and preparing them anew
 * per call cost more than SQLite's own work (docs/performance.md, bench:scale).
 */
export interface HotReads {
  /**
   * Whether they may run now: not while the connection is inside a transaction, whose rows are not
   * committed yet. The query builder then waits for the transaction to end, as before.
   */
  ready(): boolean;
  node(spiffeId: string): NodeRows | undefined;
  /** The newest audit record's id; 0 when there is none. */
  newestAuditId(): number;
}

export interface SqlDatastoreOptions {
  entryBatch?: EntryBatchStatements;
  settleWriters?: WriterSettler;
  hotReads?: HotReads;
}

/** Key that makes (spiffe_id, parent_id, selector set) unique whatever order selectors came in. */
export function selectorsKey(selectors: readonly Selector[]): string {
  const canonical = selectors
    .map((s) => `${s.type}:${s.value}`)
    .sort()
    .join('\n');
  return createHash('sha256').update(canonical).digest('hex');
}

export class SqlDatastore implements Datastore {
  readonly #db: Kysely<Database>;
  readonly #clock: Clock;
  readonly #entryBatch: EntryBatchStatements | undefined;
  readonly #settleWriters: WriterSettler | undefined;
  readonly #hotReads: HotReads | undefined;

  constructor(db: Kysely<Database>, clock: Clock, options: SqlDatastoreOptions = {}) {
    this.#db = db;
    this.#clock = clock;
    this.#entryBatch = options.entryBatch;
    this.#settleWriters = options.settleWriters;
    this.#hotReads = options.hotReads;
  }

  async createEntry(entry: NewEntry, actor: Actor): Promise<RegistrationEntry> {
    const now = nowSeconds(this.#clock);
    const created: RegistrationEntry = { ...entry, id: randomUUID(), revisionNumber: 0, createdAt: now };
    await this.#duplicateSafe(created, () =>
      this.#db.transaction().execute(async (trx) => {
        await this.#refuseDuplicate(trx, created);
        await trx.insertInto('registration_entries').values(toEntryRow(created, now)).execute();
        await insertEntryChildren(trx, created);
        await audit(trx, now, actor, 'entry.create', 'entry', created.id, entryDetail(created));
      }),
    );
    return created;
  }

  async createEntries(entries: readonly NewEntry[], actor: Actor): Promise<EntryCreation[]> {
    const now = nowSeconds(this.#clock);
    const created = entries.map((entry) => newRecord(entry, now));
    try {
      return await this.#db.transaction().execute(async (trx) => {
        const batch = this.#entryBatch;
        const spiffeIds = [...new Set(created.map((e) => e.spiffeId))];
        const taken = identitiesByKey(
          batch === undefined ? await storedIdentities(trx, spiffeIds) : batch.identities(spiffeIds),
        );
        const outcomes: EntryCreation[] = [];
        // Without a writer, the rows are gathered for multi-row inserts; with one, each entry's are
        // written as they are made, so they die young instead of piling up for the collector.
        const rows = newRows();
        for (const entry of created) {
          const row = toEntryRow(entry, now);
          const key = identityKey(row);
          const existing = taken.get(key);
          if (existing !== undefined) {
            outcomes.push({ error: new EntryDuplicateError(existing) });
            continue;
          }
          taken.set(key, entry.id);
          if (batch === undefined) addEntryRows(rows, entry, row, actor);
          else batch.write(addEntryRows(newRows(), entry, row, actor));
          outcomes.push({ entry });
        }
        if (batch === undefined) await insertRows(trx, rows);
        return outcomes;
      });
    } catch (error) {
      if (!isUniqueViolation(error)) throw error;
      // A concurrent writer (PostgreSQL) stored one of these identities after the check above, and
      // the constraint rolled the whole batch back: redo it entry by entry, so only that one fails.
      return this.#createOneByOne(entries, actor);
    }
  }

  async #createOneByOne(entries: readonly NewEntry[], actor: Actor): Promise<EntryCreation[]> {
    const outcomes: EntryCreation[] = [];
    for (const entry of entries) {
      try {
        outcomes.push({ entry: await this.createEntry(entry, actor) });
      } catch (error) {
        if (!(error instanceof ServerError)) throw error;
        outcomes.push({ error });
      }
    }
    return outcomes;
  }

  async getEntry(id: string): Promise<RegistrationEntry | undefined> {
    return (await this.#loadEntries(this.#db, [id]))[0];
  }

  async getEntries(ids: readonly string[]): Promise<RegistrationEntry[]> {
    const found: RegistrationEntry[] = [];
    for (const chunk of chunks(ids, MAX_PAGE_SIZE)) found.push(...(await this.#loadEntries(this.#db, chunk)));
    return found;
  }

  async listEntries(filter: EntryFilter, page: Page = {}): Promise<EntryPage> {
    const size = Math.min(Math.max(page.size ?? DEFAULT_PAGE_SIZE, 1), MAX_PAGE_SIZE);
    let query = this.#filtered(filter)
      .select('e.id')
      .orderBy('e.id')
      .limit(size + 1);
    if (page.token) query = query.where('e.id', '>', page.token);
    const ids = (await query.execute()).map((r) => r.id);
    const more = ids.length > size;
    const pageIds = more ? ids.slice(0, size) : ids;
    const entries = await this.#loadEntries(this.#db, pageIds);
    return { entries, nextToken: more ? (pageIds[pageIds.length - 1] ?? '') : '' };
  }

  async countEntries(filter: EntryFilter): Promise<number> {
    const row = await this.#filtered(filter)
      .select((eb) => eb.fn.countAll().as('n'))
      .executeTakeFirstOrThrow();
    return Number(row.n);
  }

  async updateEntry(
    id: string,
    entry: NewEntry,
    actor: Actor,
    expectedRevision?: number,
  ): Promise<RegistrationEntry> {
    const now = nowSeconds(this.#clock);
    const write = () =>
      this.#db.transaction().execute(async (trx) => {
        const [current] = await this.#loadEntries(trx, [id]);
        if (current === undefined) throw new EntryNotFoundError(id);
        if (expectedRevision !== undefined && expectedRevision !== current.revisionNumber) {
          throw new EntryRevisionMismatchError(id, expectedRevision, current.revisionNumber);
        }
        const updated: RegistrationEntry = {
          ...entry,
          id,
          createdAt: current.createdAt,
          revisionNumber: current.revisionNumber + 1,
        };
        await this.#refuseDuplicate(trx, updated);
        // On the revision read above: on PostgreSQL another update committed since that read would
        // otherwise be overwritten, both at the same new revision.
        if (!(await writeEntryAt(trx, updated, current.revisionNumber, now))) {
          const [found] = await this.#loadEntries(trx, [id]);
          if (found === undefined) throw new EntryNotFoundError(id);
          throw new EntryRevisionMismatchError(
            id,
            expectedRevision ?? current.revisionNumber,
            found.revisionNumber,
          );
        }
        await trx.deleteFrom('entry_selectors').where('entry_id', '=', id).execute();
        await trx.deleteFrom('entry_federates_with').where('entry_id', '=', id).execute();
        await insertEntryChildren(trx, updated);
        await audit(trx, now, actor, 'entry.update', 'entry', id, {
          before: entryDetail(current),
          after: entryDetail(updated),
        });
        return updated;
      });
    return this.#duplicateSafe({ ...entry, id, revisionNumber: 0, createdAt: 0 }, write);
  }

  async deleteEntry(id: string, actor: Actor): Promise<RegistrationEntry> {
    const now = nowSeconds(this.#clock);
    return this.#db.transaction().execute(async (trx) => {
      for (;;) {
        const [current] = await this.#loadEntries(trx, [id]);
        if (current === undefined) throw new EntryNotFoundError(id);
        // Another server's update or delete since the read is read again, so the audit records
        // what was deleted and a second delete is not-found rather than audited twice.
        if (await removeEntryAt(trx, current, now, actor)) return current;
      }
    });
  }

  async upsertNode(node: NodeRecord, actor: Actor, alias?: NewEntry): Promise<void> {
    const now = nowSeconds(this.#clock);
    const trust = node.trust ?? { state: 'trusted', changedAt: now };
    const row: AttestedNodeRow = {
      spiffe_id: node.spiffeId,
      attestation_type: node.attestationType,
      serial_number: node.serialNumber,
      new_serial_number: node.newSerialNumber ?? null,
      expires_at: node.expiresAt,
      ek_hash: node.tpm?.ekHash ?? null,
      ak_public: node.tpm?.akPublic ?? null,
      last_quote: node.tpm?.lastQuote ?? null,
      reset_count: node.tpm?.resetCount ?? null,
      ek_issuer: node.tpm?.ekIssuer ?? null,
      attestation_count: node.attestationCount,
      svid_authority: node.svidAuthority ?? null,
      event_log: node.tpm?.eventLog ?? null,
      ...trustColumns(trust),
      created_at: node.createdAt,
      updated_at: now,
    };
    await this.#db.transaction().execute(async (trx) => {
      await trx.deleteFrom('node_selectors').where('spiffe_id', '=', node.spiffeId).execute();
      await trx.deleteFrom('attested_nodes').where('spiffe_id', '=', node.spiffeId).execute();
      await trx.insertInto('attested_nodes').values(row).execute();
      if (node.selectors.length > 0) {
        await trx
          .insertInto('node_selectors')
          .values(node.selectors.map((s) => ({ spiffe_id: node.spiffeId, type: s.type, value: s.value })))
          .execute();
      }
      await audit(trx, now, actor, 'node.attest', 'node', node.spiffeId, {
        attestation_type: node.attestationType,
        serial_number: node.serialNumber,
        ...(node.newSerialNumber !== undefined ? { new_serial_number: node.newSerialNumber } : {}),
        expires_at: node.expiresAt,
        trust: trust.state,
      });
      if (alias !== undefined) await this.#ensureEntry(trx, alias, now, actor);
    });
  }

  /** Creates the entry unless an identical one (same ID, parent and selectors) exists. */
  async #ensureEntry(trx: Transaction<Database>, entry: NewEntry, now: number, actor: Actor): Promise<void> {
    const existing = await trx
      .selectFrom('registration_entries')
      .select('id')
      .where('spiffe_id', '=', entry.spiffeId)
      .where('parent_id', '=', entry.parentId)
      .where('selectors_key', '=', selectorsKey(entry.selectors))
      .executeTakeFirst();
    if (existing !== undefined) return;
    const created: RegistrationEntry = { ...entry, id: randomUUID(), revisionNumber: 0, createdAt: now };
    await trx.insertInto('registration_entries').values(toEntryRow(created, now)).execute();
    await insertEntryChildren(trx, created);
    await audit(trx, now, actor, 'entry.create', 'entry', created.id, entryDetail(created));
  }

  async getNode(spiffeId: string, options: { eventLog?: boolean } = {}): Promise<AttestedNode | undefined> {
    if (options.eventLog !== true && this.#hotReads?.ready() === true) {
      const rows = this.#hotReads.node(spiffeId);
      return rows && toAttestedNode(rows.node, rows.selectors, rows.banned, null);
    }
    return (await this.#loadNodes(this.#db, spiffeId, options.eventLog))[0];
  }

  async listNodes(): Promise<AttestedNode[]> {
    return this.#loadNodes(this.#db);
  }

  async renewNode(spiffeId: string, renewal: NodeRenewal, actor: Actor): Promise<NodeRenewalOutcome> {
    const now = nowSeconds(this.#clock);
    return this.#db.transaction().execute(async (trx): Promise<NodeRenewalOutcome> => {
      // One statement decides: PostgreSQL re-checks the condition on the row it locked, so a
      // re-quote's verdict or an eviction committed meanwhile is seen, not overwritten.
      const updated = await trx
        .updateTable('attested_nodes')
        .set({
          new_serial_number: renewal.newSerialNumber,
          svid_authority: renewal.svidAuthority ?? null,
          expires_at: renewal.expiresAt,
          ...quoteColumns(renewal.tpm),
          updated_at: now,
        })
        .where('spiffe_id', '=', spiffeId)
        .where('serial_number', '=', renewal.admittedSerial)
        .where('trust_state', '=', 'trusted')
        .returning('attestation_type')
        .executeTakeFirst();
      if (updated === undefined) return { renewed: false, node: (await this.#loadNodes(trx, spiffeId))[0] };
      if (renewal.tpm) {
        await trx.deleteFrom('node_selectors').where('spiffe_id', '=', spiffeId).execute();
        if (renewal.tpm.selectors.length > 0)
          await trx
            .insertInto('node_selectors')
            .values(renewal.tpm.selectors.map((s) => ({ spiffe_id: spiffeId, type: s.type, value: s.value })))
            .execute();
      }
      await audit(trx, now, actor, 'node.attest', 'node', spiffeId, {
        attestation_type: updated.attestation_type,
        serial_number: renewal.admittedSerial,
        new_serial_number: renewal.newSerialNumber,
        expires_at: renewal.expiresAt,
        trust: 'trusted',
      });
      return { renewed: true };
    });
  }

  async deleteNode(spiffeId: string, actor: Actor): Promise<AttestedNode> {
    const now = nowSeconds(this.#clock);
    return this.#db.transaction().execute(async (trx) => {
      const [node] = await this.#loadNodes(trx, spiffeId);
      if (node === undefined) throw new AgentNotFoundError(spiffeId);
      await trx.deleteFrom('node_selectors').where('spiffe_id', '=', spiffeId).execute();
      await trx.deleteFrom('attested_nodes').where('spiffe_id', '=', spiffeId).execute();
      await audit(trx, now, actor, 'node.evict', 'node', spiffeId, {});
      return node;
    });
  }

  async promoteNodeSerial(spiffeId: string, serial: string, actor: Actor): Promise<boolean> {
    const now = nowSeconds(this.#clock);
    return this.#db.transaction().execute(async (trx) => {
      const row = await trx
        .selectFrom('attested_nodes')
        .select('serial_number')
        .where('spiffe_id', '=', spiffeId)
        .where('new_serial_number', '=', serial)
        .executeTakeFirst();
      if (row === undefined) return false;
      // The condition again in the statement: on PostgreSQL an attestation committed since the read
      // above replaced both serials, and promoting the renewal's would bring back an SVID it ended.
      const promoted = await trx
        .updateTable('attested_nodes')
        .set({ serial_number: serial, new_serial_number: null, updated_at: now })
        .where('spiffe_id', '=', spiffeId)
        .where('new_serial_number', '=', serial)
        .executeTakeFirst();
      if (promoted.numUpdatedRows === 0n) return false;
      await audit(trx, now, actor, 'node.serial_promote', 'node', spiffeId, {
        serial_number: serial,
        superseded_serial_number: row.serial_number,
      });
      return true;
    });
  }

  async banNode(ban: Omit<NodeBan, 'bannedAt'>, actor: Actor): Promise<NodeBan> {
    const now = nowSeconds(this.#clock);
    return this.#db.transaction().execute(async (trx) => {
      const existing = await trx
        .selectFrom('banned_nodes')
        .selectAll()
        .where('spiffe_id', '=', ban.spiffeId)
        .executeTakeFirst();
      const kept: NodeBan = existing === undefined ? { ...ban, bannedAt: now } : toNodeBan(existing);
      if (existing === undefined)
        await trx
          .insertInto('banned_nodes')
          .values({ spiffe_id: kept.spiffeId, ek_hash: kept.ekHash ?? null, banned_at: now })
          .execute();
      await audit(trx, now, actor, 'node.ban', 'node', ban.spiffeId, {
        ...(ban.ekHash !== undefined ? { ek_hash: ban.ekHash } : {}),
        already_banned: existing !== undefined,
      });
      return kept;
    });
  }

  async unbanNode(spiffeId: string, actor: Actor): Promise<NodeBan | undefined> {
    const now = nowSeconds(this.#clock);
    return this.#db.transaction().execute(async (trx) => {
      const existing = await trx
        .selectFrom('banned_nodes')
        .selectAll()
        .where('spiffe_id', '=', spiffeId)
        .executeTakeFirst();
      if (existing === undefined) return undefined;
      await trx.deleteFrom('banned_nodes').where('spiffe_id', '=', spiffeId).execute();
      await audit(trx, now, actor, 'node.unban', 'node', spiffeId, {
        banned_at: Number(existing.banned_at),
      });
      return toNodeBan(existing);
    });
  }

  async getNodeBan(spiffeId: string): Promise<NodeBan | undefined> {
    const row = await this.#db
      .selectFrom('banned_nodes')
      .selectAll()
      .where('spiffe_id', '=', spiffeId)
      .executeTakeFirst();
    return row === undefined ? undefined : toNodeBan(row);
  }

  async listNodeBans(): Promise<NodeBan[]> {
    return (await this.#db.selectFrom('banned_nodes').selectAll().orderBy('spiffe_id').execute()).map(
      toNodeBan,
    );
  }

  async recordNodeTrust(
    spiffeId: string,
    update: {
      trust: NodeTrust;
      tpm?: { lastQuote: Uint8Array; resetCount: number; eventLog: Uint8Array };
      judged?: Pick<AttestedNode, 'attestationCount' | 'createdAt'>;
    },
    actor: Actor,
  ): Promise<{ node: AttestedNode; changed: boolean }> {
    const now = nowSeconds(this.#clock);
    return this.#db.transaction().execute(async (trx) => {
      const [node] = await this.#loadNodes(trx, spiffeId);
      if (node === undefined) throw new AgentNotFoundError(spiffeId);
      const changed = node.trust.state !== update.trust.state || node.trust.code !== update.trust.code;
      const trust = changed ? update.trust : node.trust;
      // Written only onto the attestation judged (else the one read above), decided in the statement:
      // PostgreSQL re-checks it on a row another server's attestation committed since that read. The
      // count alone is not enough: an evicted node attested again starts over at 1.
      const expected = update.judged ?? node;
      const written = await trx
        .updateTable('attested_nodes')
        .set({
          ...trustColumns(trust),
          ...quoteColumns(update.tpm),
          updated_at: now,
        })
        .where('spiffe_id', '=', spiffeId)
        .where('attestation_count', '=', expected.attestationCount)
        .where('created_at', '=', expected.createdAt)
        .executeTakeFirst();
      if (written.numUpdatedRows === 0n) {
        const [found] = await this.#loadNodes(trx, spiffeId);
        if (found === undefined) throw new AgentNotFoundError(spiffeId);
        throw new NodeAttestedAgainError(spiffeId, expected, found);
      }
      // Passing re-quotes of a trusted node are not news; only changes of trust are audited.
      if (changed)
        await audit(trx, now, actor, `node.${trust.state}`, 'node', spiffeId, {
          previous: node.trust.state,
          ...(trust.code !== undefined ? { code: trust.code } : {}),
          ...(trust.reason !== undefined ? { reason: trust.reason } : {}),
        });
      const tpm =
        node.tpm && update.tpm
          ? {
              ...node.tpm,
              lastQuote: update.tpm.lastQuote,
              resetCount: update.tpm.resetCount,
              eventLog: update.tpm.eventLog,
            }
          : node.tpm;
      return { node: { ...node, trust, ...(tpm ? { tpm } : {}) }, changed };
    });
  }

  async createJoinToken(token: JoinToken, actor: Actor): Promise<void> {
    const now = nowSeconds(this.#clock);
    await this.#db.transaction().execute(async (trx) => {
      await trx
        .insertInto('join_tokens')
        .values({
          token_hash: token.tokenHash,
          spiffe_id: token.spiffeId ?? null,
          expires_at: token.expiresAt,
          created_at: now,
        })
        .execute();
      // The audit log names the token by a prefix of its hash only: enough to correlate, useless to an attacker.
      await audit(trx, now, actor, 'join_token.create', 'join_token', token.tokenHash.slice(0, 12), {
        spiffe_id: token.spiffeId ?? null,
        expires_at: token.expiresAt,
      });
    });
  }

  /**
   * Tokens are found by their SHA-256, never compared as text: an index lookup on a hash of the
   * presented token leaks nothing usable about stored tokens through timing.
   */
  async consumeJoinToken(tokenHash: string, now: number, actor: Actor): Promise<JoinToken | undefined> {
    return this.#db.transaction().execute(async (trx) => {
      // The delete alone decides who used the token: of servers sharing PostgreSQL presenting it at
      // once, only the one whose delete removed the row gets it (a read before it would find it for
      // both).
      const row = await trx
        .deleteFrom('join_tokens')
        .where('token_hash', '=', tokenHash)
        .returningAll()
        .executeTakeFirst();
      if (row === undefined) return undefined;
      const expired = Number(row.expires_at) <= now;
      await audit(
        trx,
        now,
        actor,
        expired ? 'join_token.expired' : 'join_token.use',
        'join_token',
        tokenHash.slice(0, 12),
        {},
      );
      if (expired) return undefined;
      return {
        tokenHash,
        expiresAt: Number(row.expires_at),
        ...(row.spiffe_id ? { spiffeId: row.spiffe_id } : {}),
      };
    });
  }

  async issueNonce(nonce: IssuedNonce): Promise<void> {
    await this.#db
      .insertInto('attestation_nonces')
      .values({
        nonce_hash: nonce.nonceHash,
        secret_hash: nonce.secretHash ?? null,
        expires_at_ms: nonce.expiresAt,
        consumed_at_ms: null,
      })
      .execute();
  }

  async consumeNonce(nonceHash: string, now: number): Promise<NonceConsumption> {
    // One conditional UPDATE: whichever server's write lands first consumes it, the other finds none.
    const row = await this.#db
      .updateTable('attestation_nonces')
      .set({ consumed_at_ms: now })
      .where('nonce_hash', '=', nonceHash)
      .where('consumed_at_ms', 'is', null)
      .returning(['secret_hash', 'expires_at_ms'])
      .executeTakeFirst();
    if (row === undefined) return { outcome: (await this.nonceConsumed(nonceHash)) ? 'replayed' : 'unknown' };
    if (now > Number(row.expires_at_ms)) return { outcome: 'expired' };
    return { outcome: 'fresh', ...(row.secret_hash !== null ? { secretHash: row.secret_hash } : {}) };
  }

  async nonceConsumed(nonceHash: string): Promise<boolean> {
    const row = await this.#db
      .selectFrom('attestation_nonces')
      .select('consumed_at_ms')
      .where('nonce_hash', '=', nonceHash)
      .executeTakeFirst();
    return row !== undefined && row.consumed_at_ms !== null;
  }

  async pruneNonces(before: number, limit: number): Promise<number> {
    // A bounded batch found through the expiry index, so a prune never holds the table for long.
    const result = await this.#db
      .deleteFrom('attestation_nonces')
      .where('nonce_hash', 'in', (eb) =>
        eb
          .selectFrom('attestation_nonces')
          .select('nonce_hash')
          .where('expires_at_ms', '<', before)
          .orderBy('expires_at_ms')
          .limit(limit),
      )
      .executeTakeFirst();
    return Number(result.numDeletedRows);
  }

  async listCaSlots(): Promise<CaSlot[]> {
    const rows = await this.#db
      .selectFrom('ca_journal')
      .selectAll()
      .orderBy('authority')
      .orderBy('slot')
      .execute();
    return rows.map((r) => ({
      authority: r.authority,
      slot: r.slot,
      keyId: r.key_id,
      state: r.state,
      publicKeyDer: r.public_key_der,
      ...(r.certificate_der !== null ? { certificateDer: r.certificate_der } : {}),
      notBefore: Number(r.not_before),
      notAfter: Number(r.not_after),
      tainted: Number(r.tainted) === 1,
    }));
  }

  async recordCaChange(
    change: CaChange,
    action: string,
    actor: Actor,
    expectedVersion?: number,
  ): Promise<number> {
    const now = nowSeconds(this.#clock);
    return this.#db.transaction().execute(async (trx) => {
      // First: the row lock it takes orders concurrent journal changes, and a change decided on an
      // older version finds its condition false (PostgreSQL re-checks it after the lock) and stops.
      let bump = trx.updateTable('ca_journal_version').set((eb) => ({ version: eb('version', '+', 1) }));
      if (expectedVersion !== undefined) bump = bump.where('version', '=', expectedVersion);
      const bumped = await bump.returning('version').executeTakeFirst();
      if (bumped === undefined) {
        throw new CaJournalConflictError(expectedVersion ?? 0, await readCaJournalVersion(trx));
      }
      for (const gone of change.remove) {
        await trx
          .deleteFrom('ca_journal')
          .where('authority', '=', gone.authority)
          .where('key_id', '=', gone.keyId)
          .execute();
      }
      for (const slot of change.upsert) {
        await trx
          .deleteFrom('ca_journal')
          .where('authority', '=', slot.authority)
          .where('key_id', '=', slot.keyId)
          .execute();
        await trx
          .insertInto('ca_journal')
          .values({
            authority: slot.authority,
            slot: slot.slot,
            key_id: slot.keyId,
            state: slot.state,
            public_key_der: slot.publicKeyDer,
            certificate_der: slot.certificateDer ?? null,
            not_before: slot.notBefore,
            not_after: slot.notAfter,
            tainted: slot.tainted ? 1 : 0,
            updated_at: now,
          })
          .execute();
      }
      if (change.bundle) await writeBundle(trx, change.bundle, false, now);
      const keys = [...change.upsert.map((k) => k.keyId), ...change.remove.map((k) => k.keyId)];
      await audit(trx, now, actor, action, 'ca', keys.join(','), {
        keys: change.upsert.map((k) => ({
          authority: k.authority,
          slot: k.slot,
          key_id: k.keyId,
          state: k.state,
        })),
        removed: change.remove.map((k) => k.keyId),
        ...(change.bundle ? { bundle_sequence: change.bundle.sequence } : {}),
      });
      return Number(bumped.version);
    });
  }

  caJournalVersion(): Promise<number> {
    return readCaJournalVersion(this.#db);
  }

  async acquireLease(name: string, holder: string, now: number, ttlMs: number): Promise<Lease> {
    const expiresAtMs = now + ttlMs;
    return this.#db.transaction().execute(async (trx) => {
      // Each statement is one conditional write: of two servers racing, the second finds the
      // condition false once the first committed (PostgreSQL re-checks it on the locked row).
      const renewed = await trx
        .updateTable('ca_lease')
        .set({ holder, expires_at_ms: expiresAtMs })
        .where('name', '=', name)
        .where((eb) => eb.or([eb('holder', '=', holder), eb('expires_at_ms', '<=', now)]))
        .returning('name')
        .executeTakeFirst();
      if (renewed !== undefined) return { name, holder, expiresAtMs };
      const created = await trx
        .insertInto('ca_lease')
        .values({ name, holder, expires_at_ms: expiresAtMs })
        .onConflict((oc) => oc.column('name').doNothing())
        .returning('name')
        .executeTakeFirst();
      if (created !== undefined) return { name, holder, expiresAtMs };
      const held = await trx
        .selectFrom('ca_lease')
        .select(['holder', 'expires_at_ms'])
        .where('name', '=', name)
        .executeTakeFirstOrThrow();
      return { name, holder: held.holder, expiresAtMs: Number(held.expires_at_ms) };
    });
  }

  async releaseLease(name: string, holder: string): Promise<void> {
    await this.#db.deleteFrom('ca_lease').where('name', '=', name).where('holder', '=', holder).execute();
  }

  async getBundle(trustDomain: string): Promise<StoredBundle | undefined> {
    const row = await this.#db
      .selectFrom('bundles')
      .selectAll()
      .where('trust_domain', '=', trustDomain)
      .executeTakeFirst();
    return row === undefined ? undefined : toStoredBundle(row);
  }

  async listBundles(): Promise<StoredBundle[]> {
    return (await this.#db.selectFrom('bundles').selectAll().orderBy('trust_domain').execute()).map(
      toStoredBundle,
    );
  }

  async setFederatedBundle(
    trustDomain: string,
    document: string,
    actor: Actor,
    endpointSequence?: bigint,
  ): Promise<StoredBundle> {
    const now = nowSeconds(this.#clock);
    return this.#db
      .transaction()
      .execute(async (trx) => setBundle(trx, { trustDomain, document, endpointSequence }, now, actor));
  }

  async deleteFederatedBundle(
    trustDomain: string,
    actor: Actor,
    mode: BundleDeleteMode = 'restrict',
  ): Promise<void> {
    const now = nowSeconds(this.#clock);
    await this.#db.transaction().execute(async (trx) => {
      const result = await trx
        .deleteFrom('bundles')
        .where('trust_domain', '=', trustDomain)
        .where('federated', '=', 1)
        .executeTakeFirst();
      if (Number(result.numDeletedRows) === 0) throw new BundleNotFoundError(trustDomain);
      const using = (
        await trx
          .selectFrom('entry_federates_with')
          .select('entry_id')
          .where('trust_domain', '=', trustDomain)
          .execute()
      ).map((r) => r.entry_id);
      // Restrict: a bundle entries rely on is not deleted from under them (the throw rolls the
      // deletion back).
      if (using.length > 0 && mode === 'restrict') throw new BundleInUseError(trustDomain, using.length);
      let changed = 0;
      if (mode !== 'restrict')
        for (const id of using)
          if (await this.#dropFederation(trx, id, trustDomain, mode, now, actor)) changed++;
      await audit(trx, now, actor, 'bundle.delete', 'bundle', trustDomain, { mode, entries: changed });
    });
  }

  /**
   * Takes `trustDomain` out of entry `id` (`dissociate`), or deletes the entry (`delete`), at the
   * revision read: on PostgreSQL another server may have updated or deleted it since, and its
   * commit is read again, so its update is kept and the audit records what was changed. False when
   * the entry no longer federates with the trust domain (deleted, or updated without it).
   */
  async #dropFederation(
    trx: Db,
    id: string,
    trustDomain: string,
    mode: 'dissociate' | 'delete',
    now: number,
    actor: Actor,
  ): Promise<boolean> {
    for (;;) {
      const [current] = await this.#loadEntries(trx, [id]);
      if (current === undefined || !current.federatesWith.includes(trustDomain)) return false;
      if (mode === 'delete') {
        if (await removeEntryAt(trx, current, now, actor)) return true;
        continue;
      }
      const updated: RegistrationEntry = {
        ...current,
        federatesWith: current.federatesWith.filter((td) => td !== trustDomain),
        revisionNumber: current.revisionNumber + 1,
      };
      if (!(await writeEntryAt(trx, updated, current.revisionNumber, now))) continue;
      await trx
        .deleteFrom('entry_federates_with')
        .where('entry_id', '=', id)
        .where('trust_domain', '=', trustDomain)
        .execute();
      await audit(trx, now, actor, 'entry.update', 'entry', id, {
        before: entryDetail(current),
        after: entryDetail(updated),
      });
      return true;
    }
  }

  async listFederationRelationships(): Promise<FederationRelationship[]> {
    const rows = await this.#db
      .selectFrom('federation_relationships')
      .selectAll()
      .orderBy('trust_domain')
      .execute();
    return rows.map(toFederationRelationship);
  }

  async getFederationRelationship(trustDomain: string): Promise<FederationRelationship | undefined> {
    const row = await this.#db
      .selectFrom('federation_relationships')
      .selectAll()
      .where('trust_domain', '=', trustDomain)
      .executeTakeFirst();
    return row === undefined ? undefined : toFederationRelationship(row);
  }

  async createFederationRelationship(
    relationship: NewFederationRelationship,
    actor: Actor,
    bundle?: InitialBundle,
  ): Promise<FederationRelationship> {
    const now = nowSeconds(this.#clock);
    const created: FederationRelationship = { ...relationship, createdAt: now, updatedAt: now };
    try {
      return await this.#db.transaction().execute(async (trx) => {
        const existing = await federationRow(trx, relationship.trustDomain);
        if (existing !== undefined) throw new FederationExistsError(relationship.trustDomain);
        await trx.insertInto('federation_relationships').values(toFederationRow(created)).execute();
        await audit(
          trx,
          now,
          actor,
          'federation.create',
          'federation',
          created.trustDomain,
          federationDetail(created),
        );
        if (bundle !== undefined)
          await setBundle(trx, { trustDomain: created.trustDomain, document: bundle.document }, now, actor);
        return created;
      });
    } catch (error) {
      // Two creates raced (PostgreSQL): the primary key refused the second.
      if (isUniqueViolation(error)) throw new FederationExistsError(relationship.trustDomain);
      throw error;
    }
  }

  async updateFederationRelationship(
    relationship: NewFederationRelationship,
    actor: Actor,
    bundle?: InitialBundle,
  ): Promise<FederationRelationship> {
    const now = nowSeconds(this.#clock);
    return this.#db.transaction().execute(async (trx) => {
      const current = await federationRow(trx, relationship.trustDomain);
      if (current === undefined) throw new FederationNotFoundError(relationship.trustDomain);
      const before = toFederationRelationship(current);
      const updated: FederationRelationship = {
        ...relationship,
        createdAt: before.createdAt,
        updatedAt: now,
      };
      const { trust_domain: _td, created_at: _created, ...row } = toFederationRow(updated);
      await trx
        .updateTable('federation_relationships')
        .set(row)
        .where('trust_domain', '=', relationship.trustDomain)
        .execute();
      await audit(trx, now, actor, 'federation.update', 'federation', updated.trustDomain, {
        before: federationDetail(before),
        after: federationDetail(updated),
      });
      if (bundle !== undefined)
        await setBundle(trx, { trustDomain: updated.trustDomain, document: bundle.document }, now, actor);
      return updated;
    });
  }

  async deleteFederationRelationship(trustDomain: string, actor: Actor): Promise<FederationRelationship> {
    const now = nowSeconds(this.#clock);
    return this.#db.transaction().execute(async (trx) => {
      const current = await federationRow(trx, trustDomain);
      if (current === undefined) throw new FederationNotFoundError(trustDomain);
      await trx.deleteFrom('federation_relationships').where('trust_domain', '=', trustDomain).execute();
      const deleted = toFederationRelationship(current);
      await audit(trx, now, actor, 'federation.delete', 'federation', trustDomain, federationDetail(deleted));
      return deleted;
    });
  }

  async listAudit(limit: number): Promise<AuditRecord[]> {
    const rows = await this.#db
      .selectFrom('audit_log')
      .selectAll()
      .orderBy('id', 'desc')
      .limit(limit)
      .execute();
    return rows.map((r) => ({
      id: Number(r.id),
      at: Number(r.at),
      actor: r.actor,
      action: r.action,
      objectType: r.object_type,
      objectId: r.object_id,
      detail: JSON.parse(r.detail) as Record<string, unknown>,
    }));
  }

  async settledAuditHead(): Promise<number> {
    const head = await this.#newestAuditId();
    // Read the head first: a transaction holding an id at or below it took that id before the
    // read, so it was running when the settling starts.
    await this.#settleWriters?.(this.#db);
    return head;
  }

  async changesSince(after: number): Promise<AuditChangeLog> {
    const head = await this.#newestAuditId();
    if (head === after) return { head, entryIds: [], nodeIds: [], gap: false };
    // The log went back (a store restored or replaced): what happened since `after` is unknown.
    if (head < after) return { head, entryIds: [], nodeIds: [], gap: true };
    let read = await this.#auditRange(after, head);
    if (read.count === head - after) return { head, ...read.named, gap: false };
    // Ids missing in the range. With a settler they belong to transactions still running or
    // rolled back: once those have ended, what is missing then is gone for good (rolled back).
    // Without one, ids commit in order, so a missing record was deleted: nothing to wait for.
    if (this.#settleWriters === undefined) return { head, ...read.named, gap: true };
    await this.#settleWriters(this.#db);
    read = await this.#auditRange(after, head);
    return { head, ...read.named, gap: false };
  }

  async #newestAuditId(): Promise<number> {
    if (this.#hotReads?.ready() === true) return this.#hotReads.newestAuditId();
    const newest = await this.#db
      .selectFrom('audit_log')
      .select('id')
      .orderBy('id', 'desc')
      .limit(1)
      .executeTakeFirst();
    return Number(newest?.id ?? 0);
  }

  /** How many audit records (after, upTo] holds, and the entries and nodes they name, in order, each once. */
  async #auditRange(
    after: number,
    upTo: number,
  ): Promise<{ count: number; named: { entryIds: string[]; nodeIds: string[] } }> {
    const entryIds = new Set<string>();
    const nodeIds = new Set<string>();
    let count = 0;
    for (let from = after; ; ) {
      const rows = await this.#db
        .selectFrom('audit_log')
        .select(['id', 'object_type', 'object_id'])
        .where('id', '>', from)
        .where('id', '<=', upTo)
        .orderBy('id')
        .limit(AUDIT_PAGE_SIZE)
        .execute();
      count += rows.length;
      for (const row of rows) {
        if (row.object_type === 'entry') entryIds.add(row.object_id);
        else if (row.object_type === 'node') nodeIds.add(row.object_id);
      }
      const last = rows.at(-1);
      if (rows.length < AUDIT_PAGE_SIZE || last === undefined) break;
      from = Number(last.id);
    }
    return { count, named: { entryIds: [...entryIds], nodeIds: [...nodeIds] } };
  }

  async identity(): Promise<string> {
    const row = await this.#db.selectFrom('datastore_identity').select('id').executeTakeFirst();
    if (row === undefined)
      throw new DatastoreError(
        'the datastore has no identity row (table datastore_identity is empty); restore it from a backup of this datastore, or start on a new one',
      );
    return row.id;
  }

  async ping(): Promise<void> {
    await this.#db.selectFrom('audit_log').select('id').limit(1).execute();
  }

  async close(): Promise<void> {
    await this.#db.destroy();
  }

  /**
   * The check in #refuseDuplicate cannot see a concurrent transaction's uncommitted insert
   * (PostgreSQL, READ COMMITTED); the unique constraint then refuses the second one, and this turns
   * that refusal into the same named error.
   */
  async #duplicateSafe<T>(entry: RegistrationEntry, write: () => Promise<T>): Promise<T> {
    try {
      return await write();
    } catch (error) {
      if (!isUniqueViolation(error)) throw error;
      await this.#refuseDuplicate(this.#db, entry);
      throw error;
    }
  }

  async #refuseDuplicate(trx: Db, entry: RegistrationEntry): Promise<void> {
    const existing = await trx
      .selectFrom('registration_entries')
      .select('id')
      .where('spiffe_id', '=', entry.spiffeId)
      .where('parent_id', '=', entry.parentId)
      .where('selectors_key', '=', selectorsKey(entry.selectors))
      .where('id', '!=', entry.id)
      .executeTakeFirst();
    if (existing !== undefined) throw new EntryDuplicateError(existing.id);
  }

  #filtered(filter: EntryFilter) {
    let query = this.#db.selectFrom('registration_entries as e');
    if (filter.spiffeId !== undefined) query = query.where('e.spiffe_id', '=', filter.spiffeId);
    if (filter.parentId !== undefined) query = query.where('e.parent_id', '=', filter.parentId);
    for (const td of filter.federatesWith ?? []) {
      query = query.where((eb) =>
        eb.exists(
          eb
            .selectFrom('entry_federates_with as f')
            .select('f.entry_id')
            .whereRef('f.entry_id', '=', 'e.id')
            .where('f.trust_domain', '=', td),
        ),
      );
    }
    const bySelectors = filter.selectors;
    if (bySelectors !== undefined) {
      const { selectors, match } = bySelectors;
      // superset/exact: every given selector is on the entry.
      if (match === 'superset' || match === 'exact') {
        for (const s of selectors) query = query.where((eb) => eb.exists(selectorOfEntry(eb, s)));
      }
      // subset/exact: the entry has no selector outside the given set.
      if (match === 'subset' || match === 'exact') {
        query = query.where((eb) =>
          eb.not(
            eb.exists(
              eb
                .selectFrom('entry_selectors as s')
                .select('s.entry_id')
                .whereRef('s.entry_id', '=', 'e.id')
                .where((inner) => inner.not(anyOf(inner, selectors))),
            ),
          ),
        );
      }
      if (match === 'any') {
        query = query.where((eb) =>
          eb.exists(
            eb
              .selectFrom('entry_selectors as s')
              .select('s.entry_id')
              .whereRef('s.entry_id', '=', 'e.id')
              .where((inner) => anyOf(inner, selectors)),
          ),
        );
      }
    }
    return query;
  }

  async #loadEntries(db: Db, ids: readonly string[]): Promise<RegistrationEntry[]> {
    if (ids.length === 0) return [];
    const rows = await db
      .selectFrom('registration_entries')
      .selectAll()
      .where('id', 'in', [...ids])
      .orderBy('id')
      .execute();
    const selectors = await db
      .selectFrom('entry_selectors')
      .selectAll()
      .where('entry_id', 'in', [...ids])
      .orderBy('type')
      .orderBy('value')
      .execute();
    const federates = await db
      .selectFrom('entry_federates_with')
      .selectAll()
      .where('entry_id', 'in', [...ids])
      .orderBy('trust_domain')
      .execute();
    // Grouped once by entry: filtering the page's rows for each entry is quadratic in the page.
    const selectorsOf = new Map<string, Selector[]>();
    for (const s of selectors) {
      const list = selectorsOf.get(s.entry_id);
      if (list === undefined) selectorsOf.set(s.entry_id, [{ type: s.type, value: s.value }]);
      else list.push({ type: s.type, value: s.value });
    }
    const federatesOf = new Map<string, string[]>();
    for (const f of federates) {
      const list = federatesOf.get(f.entry_id);
      if (list === undefined) federatesOf.set(f.entry_id, [f.trust_domain]);
      else list.push(f.trust_domain);
    }
    return rows.map((r) => ({
      id: r.id,
      spiffeId: r.spiffe_id,
      parentId: r.parent_id,
      selectors: selectorsOf.get(r.id) ?? [],
      x509SvidTtl: Number(r.x509_svid_ttl),
      jwtSvidTtl: Number(r.jwt_svid_ttl),
      dnsNames: JSON.parse(r.dns_names) as string[],
      admin: Number(r.admin) === 1,
      downstream: Number(r.downstream) === 1,
      federatesWith: federatesOf.get(r.id) ?? [],
      hint: r.hint,
      expiresAt: Number(r.expires_at),
      revisionNumber: Number(r.revision_number),
      createdAt: Number(r.created_at),
    }));
  }

  /** Nodes without their event logs (tens of kilobytes each), unless `eventLog` asks for the one node's. */
  async #loadNodes(db: Db, spiffeId?: string, eventLog = false): Promise<AttestedNode[]> {
    let query = db.selectFrom('attested_nodes').select(NODE_COLUMNS).orderBy('spiffe_id');
    if (spiffeId !== undefined) query = query.where('spiffe_id', '=', spiffeId);
    const rows = await query.execute();
    if (rows.length === 0) return [];
    const logs =
      eventLog && spiffeId !== undefined
        ? await db
            .selectFrom('attested_nodes')
            .select('event_log')
            .where('spiffe_id', '=', spiffeId)
            .execute()
        : [];
    const log = logs[0]?.event_log ?? null;
    const selectors = await db
      .selectFrom('node_selectors')
      .selectAll()
      .where(
        'spiffe_id',
        'in',
        rows.map((r) => r.spiffe_id),
      )
      .orderBy('type')
      .orderBy('value')
      .execute();
    const bans = new Set(
      (
        await db
          .selectFrom('banned_nodes')
          .select('spiffe_id')
          .where(
            'spiffe_id',
            'in',
            rows.map((r) => r.spiffe_id),
          )
          .execute()
      ).map((b) => b.spiffe_id),
    );
    return rows.map((r) =>
      toAttestedNode(
        r,
        selectors.filter((s) => s.spiffe_id === r.spiffe_id),
        bans.has(r.spiffe_id),
        log,
      ),
    );
  }
}

/** Every node column but the event log, which only re-quotes need. */
export const NODE_COLUMNS = [
  'spiffe_id',
  'attestation_type',
  'serial_number',
  'new_serial_number',
  'expires_at',
  'ek_hash',
  'ak_public',
  'last_quote',
  'reset_count',
  'ek_issuer',
  'attestation_count',
  'svid_authority',
  'trust_state',
  'trust_code',
  'trust_reason',
  'trust_details',
  'trust_changed_at',
  'created_at',
  'updated_at',
] as const;

/** Every node column but the event log, as read. */
export type NodeColumns = Pick<AttestedNodeRow, (typeof NODE_COLUMNS)[number]>;

/** A node from its row, its selectors (ordered), its ban, and its event log when one was read. */
function toAttestedNode(
  r: NodeColumns,
  selectors: readonly { type: string; value: string }[],
  banned: boolean,
  log: Uint8Array | null,
): AttestedNode {
  return {
    spiffeId: r.spiffe_id,
    attestationType: r.attestation_type,
    serialNumber: r.serial_number,
    ...(r.new_serial_number !== null ? { newSerialNumber: r.new_serial_number } : {}),
    expiresAt: Number(r.expires_at),
    ...(r.svid_authority !== null ? { svidAuthority: r.svid_authority } : {}),
    banned,
    selectors: selectors.map((s) => ({ type: s.type, value: s.value })),
    ...(r.ek_hash !== null && r.ak_public !== null
      ? {
          tpm: {
            ekHash: r.ek_hash,
            ...(r.ek_issuer !== null ? { ekIssuer: r.ek_issuer } : {}),
            akPublic: r.ak_public,
            ...(r.last_quote !== null ? { lastQuote: r.last_quote } : {}),
            ...(r.reset_count !== null ? { resetCount: Number(r.reset_count) } : {}),
            ...(log !== null ? { eventLog: log } : {}),
          },
        }
      : {}),
    trust: {
      state: r.trust_state === 'untrusted' ? 'untrusted' : 'trusted',
      ...(r.trust_code !== null ? { code: r.trust_code } : {}),
      ...(r.trust_reason !== null ? { reason: r.trust_reason } : {}),
      ...(r.trust_details !== null ? { details: r.trust_details } : {}),
      changedAt: Number(r.trust_changed_at) || Number(r.created_at),
    },
    attestationCount: Number(r.attestation_count),
    createdAt: Number(r.created_at),
  };
}

function toNodeBan(row: BannedNodeRow): NodeBan {
  return {
    spiffeId: row.spiffe_id,
    ...(row.ek_hash !== null ? { ekHash: row.ek_hash } : {}),
    bannedAt: Number(row.banned_at),
  };
}

function trustColumns(trust: NodeTrust) {
  return {
    trust_state: trust.state,
    trust_code: trust.code ?? null,
    trust_reason: trust.reason ?? null,
    trust_details: trust.details ?? null,
    trust_changed_at: trust.changedAt,
  };
}

/** The columns of a verified quote's evidence, or none when there is no quote to record. */
function quoteColumns(tpm: { lastQuote: Uint8Array; resetCount: number; eventLog: Uint8Array } | undefined) {
  return tpm === undefined
    ? {}
    : { last_quote: tpm.lastQuote, reset_count: tpm.resetCount, event_log: tpm.eventLog };
}

type EntryScope = ExpressionBuilder<Database & { e: RegistrationEntryRow }, 'e'>;

function selectorOfEntry(eb: EntryScope, s: Selector) {
  return eb
    .selectFrom('entry_selectors as s')
    .select('s.entry_id')
    .whereRef('s.entry_id', '=', 'e.id')
    .where('s.type', '=', s.type)
    .where('s.value', '=', s.value);
}

function anyOf(
  eb: ExpressionBuilder<Database & { e: RegistrationEntryRow; s: Database['entry_selectors'] }, 'e' | 's'>,
  selectors: readonly Selector[],
) {
  if (selectors.length === 0) return eb.lit(false);
  return eb.or(selectors.map((sel) => eb.and([eb('s.type', '=', sel.type), eb('s.value', '=', sel.value)])));
}

function isUniqueViolation(error: unknown): boolean {
  const code: unknown = error !== null && typeof error === 'object' ? Reflect.get(error, 'code') : undefined;
  return code === '23505' || code === 'SQLITE_CONSTRAINT_UNIQUE';
}

async function writeBundle(
  trx: Db,
  bundle: { trustDomain: string; document: string; sequence: number; endpointSequence?: bigint | undefined },
  federated: boolean,
  now: number,
): Promise<void> {
  await trx.deleteFrom('bundles').where('trust_domain', '=', bundle.trustDomain).execute();
  await trx
    .insertInto('bundles')
    .values({
      trust_domain: bundle.trustDomain,
      document: bundle.document,
      sequence: bundle.sequence,
      federated: federated ? 1 : 0,
      updated_at: now,
      endpoint_sequence: bundle.endpointSequence?.toString() ?? null,
    })
    .execute();
}

/** Stores a federated bundle, its sequence one past the one it replaces, audited as bundle.set. */
async function setBundle(
  trx: Db,
  bundle: { trustDomain: string; document: string; endpointSequence?: bigint | undefined },
  now: number,
  actor: Actor,
): Promise<StoredBundle> {
  const { trustDomain, document, endpointSequence } = bundle;
  const previous = await trx
    .selectFrom('bundles')
    .select(['sequence', 'endpoint_sequence'])
    .where('trust_domain', '=', trustDomain)
    .executeTakeFirst();
  // Checked here, in the writing transaction, and not only by the poller before its fetch: another
  // server may have stored a newer document while this one fetched. Two such transactions at once
  // cannot both write: the second's insert finds the first's row and fails.
  if (endpointSequence !== undefined && previous?.endpoint_sequence != null) {
    const stored = BigInt(previous.endpoint_sequence);
    if (stored > endpointSequence) throw new BundleSequenceStaleError(trustDomain, stored, endpointSequence);
  }
  const sequence = previous === undefined ? 1 : Number(previous.sequence) + 1;
  await writeBundle(trx, { trustDomain, document, sequence, endpointSequence }, true, now);
  await audit(trx, now, actor, 'bundle.set', 'bundle', trustDomain, {
    sequence,
    ...(endpointSequence !== undefined ? { endpoint_sequence: endpointSequence.toString() } : {}),
  });
  return {
    trustDomain,
    document,
    sequence,
    federated: true,
    updatedAt: now,
    ...(endpointSequence !== undefined ? { endpointSequence } : {}),
  };
}

function federationRow(trx: Db, trustDomain: string): Promise<FederationRelationshipRow | undefined> {
  return trx
    .selectFrom('federation_relationships')
    .selectAll()
    .where('trust_domain', '=', trustDomain)
    .executeTakeFirst();
}

function toFederationRow(relationship: FederationRelationship): FederationRelationshipRow {
  return {
    trust_domain: relationship.trustDomain,
    bundle_endpoint_url: relationship.bundleEndpointUrl,
    profile: relationship.profile,
    endpoint_spiffe_id: relationship.endpointSpiffeId ?? null,
    created_at: relationship.createdAt,
    updated_at: relationship.updatedAt,
  };
}

function toFederationRelationship(row: FederationRelationshipRow): FederationRelationship {
  return {
    trustDomain: row.trust_domain,
    bundleEndpointUrl: row.bundle_endpoint_url,
    profile: federationProfile(row),
    ...(row.endpoint_spiffe_id !== null ? { endpointSpiffeId: row.endpoint_spiffe_id } : {}),
    createdAt: Number(row.created_at),
    updatedAt: Number(row.updated_at),
  };
}

function federationProfile(row: FederationRelationshipRow): FederationRelationship['profile'] {
  if (row.profile === 'https_web' || row.profile === 'https_spiffe') return row.profile;
  throw new DatastoreError(
    `federation relationship ${row.trust_domain} has profile ${JSON.stringify(row.profile)}, which this server does not know; it was written by another version`,
  );
}

function federationDetail(relationship: NewFederationRelationship): Record<string, unknown> {
  return {
    bundle_endpoint_url: relationship.bundleEndpointUrl,
    profile: relationship.profile,
    ...(relationship.endpointSpiffeId !== undefined
      ? { endpoint_spiffe_id: relationship.endpointSpiffeId }
      : {}),
  };
}

function toStoredBundle(row: BundleRow): StoredBundle {
  return {
    trustDomain: row.trust_domain,
    document: row.document,
    sequence: Number(row.sequence),
    federated: Number(row.federated) === 1,
    updatedAt: Number(row.updated_at),
    ...(row.endpoint_sequence !== null ? { endpointSequence: BigInt(row.endpoint_sequence) } : {}),
  };
}

function toEntryRow(entry: RegistrationEntry, now: number): RegistrationEntryRow {
  return {
    id: entry.id,
    spiffe_id: entry.spiffeId,
    parent_id: entry.parentId,
    selectors_key: selectorsKey(entry.selectors),
    x509_svid_ttl: entry.x509SvidTtl,
    jwt_svid_ttl: entry.jwtSvidTtl,
    dns_names: JSON.stringify(entry.dnsNames),
    admin: entry.admin ? 1 : 0,
    downstream: entry.downstream ? 1 : 0,
    hint: entry.hint,
    expires_at: entry.expiresAt,
    revision_number: entry.revisionNumber,
    created_at: entry.createdAt,
    updated_at: now,
  };
}

/**
 * The (spiffe_id, parent_id, selectors_key) identity the unique constraint keeps, as one string:
 * the parent's length and the newline after the key (hex, see selectorsKey) keep it unambiguous at
 * less cost than quoting all three (JSON).
 */
function identityKey(row: Pick<RegistrationEntryRow, 'spiffe_id' | 'parent_id' | 'selectors_key'>): string {
  return `${row.parent_id.length}:${row.parent_id}${row.selectors_key}\n${row.spiffe_id}`;
}

function chunks<T>(items: readonly T[], size: number): T[][] {
  const out: T[][] = [];
  for (let i = 0; i < items.length; i += size) out.push(items.slice(i, i + size));
  return out;
}

/** Stored entries whose SPIFFE ID is one of `spiffeIds`, a query per {@link BATCH_ROWS} of them. */
async function storedIdentities(trx: Db, spiffeIds: readonly string[]): Promise<EntryIdentityRow[]> {
  const found: EntryIdentityRow[] = [];
  for (const chunk of chunks(spiffeIds, BATCH_ROWS)) {
    const rows = await trx
      .selectFrom('registration_entries')
      .select(['id', 'spiffe_id', 'parent_id', 'selectors_key'])
      .where('spiffe_id', 'in', chunk)
      .execute();
    found.push(...rows);
  }
  return found;
}

/** Entry ids by identity key. */
function identitiesByKey(rows: readonly EntryIdentityRow[]): Map<string, string> {
  const taken = new Map<string, string>();
  for (const r of rows) taken.set(identityKey(r), r.id);
  return taken;
}

/**
 * A new entry as stored, its fields named one by one: spreading `entry` into a literal with more
 * fields takes V8's slow path, several microseconds an entry (a tenth of a batch's time).
 */
function newRecord(entry: NewEntry, now: number): RegistrationEntry {
  return {
    id: randomUUID(),
    spiffeId: entry.spiffeId,
    parentId: entry.parentId,
    selectors: entry.selectors,
    x509SvidTtl: entry.x509SvidTtl,
    jwtSvidTtl: entry.jwtSvidTtl,
    dnsNames: entry.dnsNames,
    admin: entry.admin,
    downstream: entry.downstream,
    federatesWith: entry.federatesWith,
    hint: entry.hint,
    expiresAt: entry.expiresAt,
    revisionNumber: 0,
    createdAt: now,
  };
}

function newRows(): EntryRows {
  return { entries: [], selectors: [], federatesWith: [], audit: [] };
}

/** Adds the rows createEntry writes for `entry` (its row given) to `rows`, and returns them. */
function addEntryRows(
  rows: EntryRows,
  entry: RegistrationEntry,
  row: RegistrationEntryRow,
  actor: Actor,
): EntryRows {
  rows.entries.push(row);
  for (const s of entry.selectors) rows.selectors.push({ entry_id: entry.id, type: s.type, value: s.value });
  for (const td of entry.federatesWith) rows.federatesWith.push({ entry_id: entry.id, trust_domain: td });
  rows.audit.push({
    at: row.updated_at,
    actor,
    action: 'entry.create',
    object_type: 'entry',
    object_id: entry.id,
    detail: JSON.stringify(entryDetail(entry)),
  });
  return rows;
}

/** The rows as multi-row statements (PostgreSQL; any store without an EntryRowsWriter). */
async function insertRows(trx: Db, rows: EntryRows): Promise<void> {
  for (const chunk of chunks(rows.entries, BATCH_ROWS))
    await trx.insertInto('registration_entries').values(chunk).execute();
  for (const chunk of chunks(rows.selectors, BATCH_ROWS))
    await trx.insertInto('entry_selectors').values(chunk).execute();
  for (const chunk of chunks(rows.federatesWith, BATCH_ROWS)) {
    await trx.insertInto('entry_federates_with').values(chunk).execute();
  }
  for (const chunk of chunks(rows.audit, BATCH_ROWS))
    await trx.insertInto('audit_log').values(chunk).execute();
}

async function insertEntryChildren(trx: Db, entry: RegistrationEntry): Promise<void> {
  if (entry.selectors.length > 0) {
    await trx
      .insertInto('entry_selectors')
      .values(entry.selectors.map((s) => ({ entry_id: entry.id, type: s.type, value: s.value })))
      .execute();
  }
  if (entry.federatesWith.length > 0) {
    await trx
      .insertInto('entry_federates_with')
      .values(entry.federatesWith.map((td) => ({ entry_id: entry.id, trust_domain: td })))
      .execute();
  }
}

/**
 * Writes `entry`'s row over the stored one if that is still at `readRevision`, decided in the
 * statement. False when another server's write changed or deleted it since (PostgreSQL).
 */
async function writeEntryAt(
  trx: Db,
  entry: RegistrationEntry,
  readRevision: number,
  at: number,
): Promise<boolean> {
  const { id: _id, created_at: _created, ...row } = toEntryRow(entry, at);
  const written = await trx
    .updateTable('registration_entries')
    .set(row)
    .where('id', '=', entry.id)
    .where('revision_number', '=', readRevision)
    .executeTakeFirst();
  return written.numUpdatedRows > 0n;
}

/**
 * Deletes `entry` if it is still at the revision read, audited as `entry.delete`; its selectors and
 * federations go with it (ON DELETE CASCADE). False when another server's write changed or deleted
 * it since (PostgreSQL): read it again.
 */
async function removeEntryAt(trx: Db, entry: RegistrationEntry, at: number, actor: Actor): Promise<boolean> {
  const deleted = await trx
    .deleteFrom('registration_entries')
    .where('id', '=', entry.id)
    .where('revision_number', '=', entry.revisionNumber)
    .executeTakeFirst();
  if (deleted.numDeletedRows === 0n) return false;
  await audit(trx, at, actor, 'entry.delete', 'entry', entry.id, entryDetail(entry));
  return true;
}

function entryDetail(entry: RegistrationEntry): Record<string, unknown> {
  return {
    spiffe_id: entry.spiffeId,
    parent_id: entry.parentId,
    selectors: entry.selectors.map((s) => `${s.type}:${s.value}`),
    revision_number: entry.revisionNumber,
  };
}

async function readCaJournalVersion(db: Db): Promise<number> {
  const row = await db.selectFrom('ca_journal_version').select('version').executeTakeFirstOrThrow();
  return Number(row.version);
}

async function audit(
  trx: Db,
  at: number,
  actor: Actor,
  action: string,
  objectType: string,
  objectId: string,
  detail: Record<string, unknown>,
): Promise<void> {
  await trx
    .insertInto('audit_log')
    .values({
      at,
      actor,
      action,
      object_type: objectType,
      object_id: objectId,
      detail: JSON.stringify(detail),
    })
    .execute();
}
