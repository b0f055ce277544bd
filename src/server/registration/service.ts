/**
 * The registration API's behaviour, independent of gRPC: each method takes the decoded request and
 * the caller (for the audit log) and returns the response message or throws a ServerError.
 *
 * @module
 */
import { createHash, randomBytes } from 'node:crypto';
import type {
  AgentIdRequest,
  AgentMessage,
  BanAgentRequest,
  BatchCreateEntryRequest,
  BatchCreateEntryResponse,
  BatchDeleteEntryRequest,
  BatchDeleteEntryResponse,
  BatchUpdateEntryRequest,
  BatchUpdateEntryResponse,
  CountEntriesRequest,
  CountEntriesResponse,
  CreateJoinTokenRequest,
  EntryFilterMessage,
  EntryMessage,
  EntryResult,
  GetEntryRequest,
  JoinTokenMessage,
  LastQuoteMessage,
  ListAgentsRequest,
  ListAgentsResponse,
  ListEntriesRequest,
  ListEntriesResponse,
  StatusMessage,
} from '../admin/messages.js';
import { type Clock, nowSeconds } from '../clock.js';
import type {
  Actor,
  AttestedNode,
  Datastore,
  EntryFilter,
  NewEntry,
  NodeBan,
  RegistrationEntry,
  Selector,
  SelectorMatch,
} from '../datastore/datastore.js';
import {
  AgentIdInvalidError,
  AgentNotFoundError,
  DatastoreError,
  EkHashInvalidError,
  EntryNotFoundError,
  InvalidArgumentError,
  ServerError,
  TtlOutOfRangeError,
} from '../errors.js';
import { serverSpiffeId } from '../identity.js';
import { akSummary, type LastQuote } from '../nodeattestor/tpm.js';
import { FederationRegistry, refuseUnknownTrustDomains } from './federation.js';
import { checkIdInTrustDomain, checkIssuableId, checkLookupId } from './ids.js';
import { checkEntry, checkSelector } from './validate.js';

export const JOIN_TOKEN_DEFAULT_TTL = 600;
export const JOIN_TOKEN_MAX_TTL = 7 * 86400;
const MATCHES: readonly SelectorMatch[] = ['exact', 'subset', 'superset', 'any'];

/** SHA-256 of a join token, hex: the only form in which the server keeps it. */
export function hashJoinToken(token: string): string {
  return createHash('sha256').update(token).digest('hex');
}

export class RegistrationService {
  readonly #store: Datastore;
  readonly #trustDomain: string;
  readonly #clock: Clock;
  /** The FederationService's side of the admin API; entries' federates_with is checked against it. */
  readonly federation: FederationRegistry;

  constructor(store: Datastore, trustDomain: string, clock: Clock) {
    this.#store = store;
    this.#trustDomain = trustDomain;
    this.#clock = clock;
    this.federation = new FederationRegistry(store, trustDomain);
  }

  /**
   * Checks every entry, then creates those that pass in one datastore transaction; each result
   * (in request order) is the entry created or the error that refused it, as SPIRE's batch.
   */
  async batchCreateEntry(request: BatchCreateEntryRequest, actor: Actor): Promise<BatchCreateEntryResponse> {
    const results: EntryResult[] = [];
    const checked: { index: number; entry: NewEntry }[] = [];
    // Read once for the batch, and only when an entry federates.
    const known = request.entries.some((m) => m.federates_with.length > 0)
      ? await this.federation.knownTrustDomains()
      : new Set<string>();
    request.entries.forEach((message, index) => {
      try {
        const entry = checkEntry(message, this.#trustDomain);
        refuseUnknownTrustDomains(entry.federatesWith, known);
        checked.push({ index, entry });
        results.push({ status: OK, entry: null });
      } catch (error) {
        results.push({ status: statusOf(error), entry: null });
      }
    });
    const outcomes = await this.#store.createEntries(
      checked.map((c) => c.entry),
      actor,
    );
    checked.forEach(({ index }, i) => {
      const outcome = outcomes[i];
      if (outcome === undefined)
        throw new DatastoreError('the datastore answered fewer entries than it was given');
      results[index] =
        'entry' in outcome
          ? { status: OK, entry: toEntryMessage(outcome.entry) }
          : { status: statusOf(outcome.error), entry: null };
    });
    return { results };
  }

  async getEntry(request: GetEntryRequest): Promise<EntryMessage> {
    const entry = await this.#store.getEntry(request.id);
    if (entry === undefined) throw new EntryNotFoundError(request.id);
    return toEntryMessage(entry);
  }

  async listEntries(request: ListEntriesRequest): Promise<ListEntriesResponse> {
    if (request.page_size < 0)
      throw new InvalidArgumentError(`page_size ${request.page_size} must not be negative`);
    const page = await this.#store.listEntries(this.#filter(request.filter), {
      token: request.page_token,
      ...(request.page_size > 0 ? { size: request.page_size } : {}),
    });
    return { entries: page.entries.map(toEntryMessage), next_page_token: page.nextToken };
  }

  async countEntries(request: CountEntriesRequest): Promise<CountEntriesResponse> {
    return { count: await this.#store.countEntries(this.#filter(request.filter)) };
  }

  async batchUpdateEntry(request: BatchUpdateEntryRequest, actor: Actor): Promise<BatchUpdateEntryResponse> {
    const results = [];
    for (const message of request.entries) {
      try {
        const entry = checkEntry(message, this.#trustDomain);
        await this.#refuseNewUnknown(message.id, entry.federatesWith);
        const expected = message.revision_number > 0 ? message.revision_number : undefined;
        const updated = await this.#store.updateEntry(message.id, entry, actor, expected);
        results.push({ status: OK, entry: toEntryMessage(updated) });
      } catch (error) {
        results.push({ status: statusOf(error), entry: null });
      }
    }
    return { results };
  }

  /**
   * Refuses trust domains an update adds to the entry's federates_with that have neither a
   * relationship nor a bundle; those it already had stay allowed, so an entry written before its
   * trust domain's bundle was deleted can still be changed in other ways.
   */
  async #refuseNewUnknown(id: string, federatesWith: readonly string[]): Promise<void> {
    if (federatesWith.length === 0) return;
    const current = await this.#store.getEntry(id);
    // An unknown entry is refused by the update itself, as not found.
    if (current === undefined) return;
    const added = federatesWith.filter((td) => !current.federatesWith.includes(td));
    if (added.length > 0) refuseUnknownTrustDomains(added, await this.federation.knownTrustDomains());
  }

  async batchDeleteEntry(request: BatchDeleteEntryRequest, actor: Actor): Promise<BatchDeleteEntryResponse> {
    const results = [];
    for (const id of request.ids) {
      try {
        await this.#store.deleteEntry(id, actor);
        results.push({ status: OK, id });
      } catch (error) {
        results.push({ status: statusOf(error), id });
      }
    }
    return { results };
  }

  /** Attested agents, and banned agent IDs without a node record. */
  async listAgents(request: ListAgentsRequest): Promise<ListAgentsResponse> {
    if (!['', 'true', 'false'].includes(request.by_banned)) {
      throw new InvalidArgumentError(
        `by_banned ${JSON.stringify(request.by_banned)}: allowed "true", "false" or empty`,
      );
    }
    const nodes = await this.#store.listNodes();
    const bans = new Map((await this.#store.listNodeBans()).map((b) => [b.spiffeId, b]));
    const attested = new Set(nodes.map((n) => n.spiffeId));
    const agents = [
      ...(await Promise.all(nodes.map((n) => this.#toAgentMessage(n, bans.get(n.spiffeId))))),
      ...[...bans.values()].filter((b) => !attested.has(b.spiffeId)).map(banOnlyMessage),
    ]
      .filter((a) => request.by_banned === '' || String(a.banned) === request.by_banned)
      .sort((a, b) => (a.spiffe_id < b.spiffe_id ? -1 : a.spiffe_id > b.spiffe_id ? 1 : 0));
    return { agents };
  }

  /** The agent, or a ban on the ID when no node has it (banned before attesting, or evicted). */
  async getAgent(request: AgentIdRequest): Promise<AgentMessage> {
    const node = await this.#store.getNode(request.spiffe_id);
    const ban = await this.#store.getNodeBan(request.spiffe_id);
    if (node !== undefined) return this.#toAgentMessage(node, ban);
    if (ban !== undefined) return banOnlyMessage(ban);
    throw new AgentNotFoundError(request.spiffe_id);
  }

  /** Deletes the node record only: a ban on its ID holds until `unbanAgent`. */
  async evictAgent(request: AgentIdRequest, actor: Actor): Promise<AgentMessage> {
    const node = await this.#store.deleteNode(request.spiffe_id, actor);
    return this.#toAgentMessage(node, await this.#store.getNodeBan(request.spiffe_id));
  }

  /**
   * Bans an agent ID, attested or not: by `spiffe_id`, or a TPM by `ek_hash` (its agent ID is
   * spiffe://<td>/agent/tpm/<EK hash>, see the agent API), so a TPM can be refused before it ever
   * attests.
   */
  async banAgent(request: BanAgentRequest, actor: Actor): Promise<AgentMessage> {
    if ((request.spiffe_id === '') === (request.ek_hash === ''))
      throw new InvalidArgumentError(
        'give the agent to ban by exactly one of spiffe_id (--spiffe-id) or ek_hash (--ek-hash)',
      );
    const ban =
      request.ek_hash !== ''
        ? this.#tpmBan(request.ek_hash)
        : this.#banOf(checkIdInTrustDomain('spiffe_id', request.spiffe_id, this.#trustDomain));
    const stored = await this.#store.banNode(ban, actor);
    const node = await this.#store.getNode(stored.spiffeId);
    return node === undefined ? banOnlyMessage(stored) : this.#toAgentMessage(node, stored);
  }

  async unbanAgent(request: AgentIdRequest, actor: Actor): Promise<AgentMessage> {
    const lifted = await this.#store.unbanNode(request.spiffe_id, actor);
    const node = await this.#store.getNode(request.spiffe_id);
    if (node !== undefined) return this.#toAgentMessage(node);
    if (lifted !== undefined) return { ...banOnlyMessage(lifted), banned: false, banned_at: 0 };
    throw new AgentNotFoundError(request.spiffe_id);
  }

  #tpmBan(ekHash: string): Omit<NodeBan, 'bannedAt'> {
    if (!/^[0-9a-fA-F]{64}$/.test(ekHash)) throw new EkHashInvalidError(ekHash);
    const hash = ekHash.toLowerCase();
    return { spiffeId: `spiffe://${this.#trustDomain}/agent/tpm/${hash}`, ekHash: hash };
  }

  /** A TPM agent's ID carries its EK hash: the ban records it too. */
  #banOf(spiffeId: string): Omit<NodeBan, 'bannedAt'> {
    const path = spiffeId.slice(`spiffe://${this.#trustDomain}`.length);
    const tpm = /^\/agent\/tpm\/([0-9a-f]{64})$/.exec(path);
    if (tpm?.[1] !== undefined) return { spiffeId, ekHash: tpm[1] };
    if (!/^\/agent\/[^/]+\/.+/.test(path))
      throw new AgentIdInvalidError('spiffe_id', spiffeId, this.#trustDomain);
    return { spiffeId };
  }

  async createJoinToken(request: CreateJoinTokenRequest, actor: Actor): Promise<JoinTokenMessage> {
    const ttl = request.ttl === 0 ? JOIN_TOKEN_DEFAULT_TTL : request.ttl;
    if (ttl < 1 || ttl > JOIN_TOKEN_MAX_TTL)
      throw new TtlOutOfRangeError('ttl', request.ttl, 1, JOIN_TOKEN_MAX_TTL);
    const spiffeId =
      request.spiffe_id === ''
        ? undefined
        : checkIssuableId('spiffe_id', request.spiffe_id, this.#trustDomain);
    const value = randomBytes(32).toString('base64url');
    const expiresAt = nowSeconds(this.#clock) + ttl;
    await this.#store.createJoinToken(
      { tokenHash: hashJoinToken(value), expiresAt, ...(spiffeId ? { spiffeId } : {}) },
      actor,
    );
    return { value, expires_at: expiresAt };
  }

  /**
   * Node aliases: entries whose parent is the server's own ID and whose selectors the node has
   * (all of them), so one entry can name a whole class of agents. Besides its attested selectors,
   * every node has `spiffe_id:<its agent ID>`, as in SPIRE, so an entry can also name one agent
   * (that is how a join token's SPIFFE ID is given, see joinTokenAlias).
   */
  async nodeAliases(node: Pick<AttestedNode, 'spiffeId' | 'selectors'>): Promise<RegistrationEntry[]> {
    const filter: EntryFilter = {
      parentId: serverSpiffeId(this.#trustDomain),
      selectors: { selectors: [...node.selectors, agentIdSelector(node.spiffeId)], match: 'subset' },
    };
    const aliases: RegistrationEntry[] = [];
    let token = '';
    do {
      const page = await this.#store.listEntries(filter, { token });
      aliases.push(...page.entries);
      token = page.nextToken;
    } while (token !== '');
    return aliases;
  }

  #filter(message: EntryFilterMessage | null): EntryFilter {
    if (message === null) return {};
    const filter: EntryFilter = {};
    if (message.by_spiffe_id !== '') filter.spiffeId = checkLookupId('by_spiffe_id', message.by_spiffe_id);
    if (message.by_parent_id !== '') filter.parentId = checkLookupId('by_parent_id', message.by_parent_id);
    if (message.by_federates_with.length > 0) filter.federatesWith = [...message.by_federates_with];
    if (message.by_selectors.length > 0) {
      const match = message.selector_match === '' ? 'exact' : message.selector_match;
      if (!isMatch(match)) {
        throw new InvalidArgumentError(
          `selector_match ${JSON.stringify(match)}: allowed ${MATCHES.join(', ')}`,
        );
      }
      filter.selectors = { selectors: message.by_selectors.map(checkSelector), match };
    } else if (message.selector_match !== '') {
      throw new InvalidArgumentError('selector_match needs at least one selector to match against');
    }
    return filter;
  }

  async #toAgentMessage(node: AttestedNode, ban?: NodeBan): Promise<AgentMessage> {
    const aliases = await this.nodeAliases(node);
    const ak = node.tpm === undefined ? undefined : akSummary(node.tpm.akPublic);
    return {
      spiffe_id: node.spiffeId,
      attestation_type: node.attestationType,
      x509_svid_serial_number: node.serialNumber,
      x509_svid_expires_at: node.expiresAt,
      banned: node.banned,
      selectors: node.selectors,
      ek_hash: node.tpm?.ekHash ?? '',
      created_at: node.createdAt,
      alias_spiffe_ids: aliases.map((a) => a.spiffeId),
      ek_issuer: node.tpm?.ekIssuer ?? '',
      ak_public_sha256: ak?.sha256 ?? '',
      ak_algorithm: ak?.algorithm ?? '',
      last_quote: node.tpm?.lastQuote === undefined ? null : toLastQuoteMessage(node.tpm.lastQuote),
      attestation_count: node.attestationCount,
      trust: {
        state: node.trust.state,
        code: node.trust.code ?? '',
        reason: node.trust.reason ?? '',
        details: node.trust.details ?? '',
        changed_at: node.trust.changedAt,
      },
      banned_at: ban?.bannedAt ?? 0,
    };
  }
}

/** A banned agent ID that no node record has. */
function banOnlyMessage(ban: NodeBan): AgentMessage {
  return {
    spiffe_id: ban.spiffeId,
    attestation_type: '',
    x509_svid_serial_number: '',
    x509_svid_expires_at: 0,
    banned: true,
    selectors: [],
    ek_hash: ban.ekHash ?? '',
    created_at: 0,
    alias_spiffe_ids: [],
    ek_issuer: '',
    ak_public_sha256: '',
    ak_algorithm: '',
    last_quote: null,
    attestation_count: 0,
    trust: null,
    banned_at: ban.bannedAt,
  };
}

/** The node selector every agent has: its own SPIFFE ID. */
function agentIdSelector(agentId: string): Selector {
  return { type: 'spiffe_id', value: agentId };
}

/**
 * The node-alias entry a join token with a SPIFFE ID creates when its agent attests (SPIRE's
 * `token generate -spiffeID`): parent the server, selector the agent's own ID, so nodeAliases gives
 * that agent, and only it, the token's ID.
 */
export function joinTokenAlias(trustDomain: string, agentId: string, spiffeId: string): NewEntry {
  return {
    spiffeId,
    parentId: serverSpiffeId(trustDomain),
    selectors: [agentIdSelector(agentId)],
    x509SvidTtl: 0,
    jwtSvidTtl: 0,
    dnsNames: [],
    admin: false,
    downstream: false,
    federatesWith: [],
    hint: '',
    expiresAt: 0,
  };
}

/** The stored last quote (JSON written by the agent API, see LastQuote) as the admin API sends it. */
function toLastQuoteMessage(stored: Uint8Array): LastQuoteMessage {
  const quote = JSON.parse(Buffer.from(stored).toString('utf8')) as LastQuote;
  return {
    quoted_at: quote.quoted_at,
    reset_count: quote.reset_count,
    restart_count: quote.restart_count,
    firmware_version: quote.firmware_version,
    pcrs: Object.entries(quote.pcrs).flatMap(([bank, values]) =>
      Object.entries(values)
        .map(([index, value]) => ({ bank, index: Number(index), value }))
        .sort((a, b) => a.index - b.index),
    ),
  };
}

function isMatch(value: string): value is SelectorMatch {
  return (MATCHES as readonly string[]).includes(value);
}

const OK: StatusMessage = { code: 0, error_code: '', message: 'OK' };

function statusOf(error: unknown): StatusMessage {
  if (error instanceof ServerError)
    return { code: error.grpcStatus, error_code: error.code, message: error.message };
  throw error;
}

export function toEntryMessage(entry: RegistrationEntry): EntryMessage {
  return {
    id: entry.id,
    spiffe_id: entry.spiffeId,
    parent_id: entry.parentId,
    selectors: entry.selectors,
    x509_svid_ttl: entry.x509SvidTtl,
    jwt_svid_ttl: entry.jwtSvidTtl,
    dns_names: entry.dnsNames,
    admin: entry.admin,
    downstream: entry.downstream,
    federates_with: entry.federatesWith,
    hint: entry.hint,
    expires_at: entry.expiresAt,
    revision_number: entry.revisionNumber,
    created_at: entry.createdAt,
  };
}
