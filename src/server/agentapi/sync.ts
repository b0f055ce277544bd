/**
 * The agent API's entry sync, workload SVID and bundle calls (FetchEntries, BatchNewX509SVID,
 * NewJWTSVID, FetchBundles). Each is mTLS with the agent SVID: the caller is the agent named by its
 * verified client certificate, and may only have what the entries parented to it (directly, through
 * its node aliases, or further down) grant.
 *
 * @module
 */
import {
  Metadata,
  type ServerErrorResponse,
  type ServerUnaryCall,
  type ServerWritableStream,
  type sendUnaryData,
} from '@grpc/grpc-js';
import type { Counter, Histogram } from 'prom-client';
import type {
  BatchNewX509SvidRequest,
  BatchNewX509SvidResponse,
  EntryMessage,
  FetchBundlesResponse,
  FetchEntriesRequest,
  FetchEntriesResponse,
  NewJwtSvidRequest,
  NewJwtSvidResponse,
} from '../../agent-api/proto.js';
import {
  checkJwtSvidAudience,
  isSpiffeError,
  type ParsedCsr,
  parseCsr,
  type SpiffeBundle,
  SpiffeId,
} from '../../spiffe/index.js';
import type { CertificateAuthority } from '../ca/authority.js';
import { logJwtIssued, logX509Issued } from '../ca/issuance-log.js';
import { type Clock, nowSeconds } from '../clock.js';
import type { AttestedNode, Datastore, RegistrationEntry } from '../datastore/datastore.js';
import type { Logger } from '../log.js';
import { AttestationError } from '../nodeattestor/errors.js';
import { admitNode, authenticateAgent, type Caller } from './admission.js';
import type { Authorization, EntryJournal, SyncCursor } from './entries.js';

/** Entries per FetchEntries message: ~300 bytes each keeps a page far below gRPC's 4 MiB limit. */
export const ENTRY_PAGE_SIZE = 1000;
/** CSRs per BatchNewX509SVID call the server accepts. */
export const MAX_CSRS_PER_BATCH = 500;

export interface SyncOptions {
  trustDomain: string;
  ca: CertificateAuthority;
  datastore: Datastore;
  journal: EntryJournal;
  clock: Clock;
  logger: Logger;
  /** TTLs for entries that set none (0). */
  defaultX509SvidTtl: number;
  defaultJwtSvidTtl: number;
  /** Entries sent to agents, by kind of sync. */
  entriesSent: Counter<'sync'>;
  svidsIssued: Counter<'kind' | 'issued_to'>;
  /** How long each call took to answer, by rpc and result. */
  duration: Histogram<'rpc' | 'result'>;
}

/**
 * An untrusted node (its last re-quote failed or went unanswered) gets nothing that identities are
 * made of until a re-quote passes.
 */
export function refuseUntrusted(node: Pick<AttestedNode, 'spiffeId' | 'trust'>): void {
  if (node.trust.state === 'untrusted')
    throw new AttestationError(
      'ERR_AGENT_UNTRUSTED',
      `agent ${node.spiffeId} is untrusted since ${new Date(node.trust.changedAt * 1000).toISOString()} (${node.trust.code ?? 'unknown'}: ${node.trust.reason ?? ''}); nothing is issued to it until a re-quote passes`,
    );
}

/** The calling agent: its entries, its ID, and the serial of the agent SVID it presented. */
type AgentAuthorization = Authorization & { agentId: string; agentSerial: string };

export class SyncHandlers {
  readonly #o: SyncOptions;

  constructor(options: SyncOptions) {
    this.#o = options;
  }

  /** The handlers to add to the Agent service. */
  implementation() {
    return {
      FetchEntries: (call: ServerWritableStream<FetchEntriesRequest, FetchEntriesResponse>) => {
        const end = this.#o.duration.startTimer({ rpc: 'FetchEntries' });
        void this.#fetchEntries(call).then(
          () => end({ result: call.cancelled ? 'cancelled' : 'ok' }),
          (error: unknown) => {
            const refusal = this.#refusal('FetchEntries', error);
            end({ result: codeOf(refusal) });
            call.emit('error', refusal);
          },
        );
      },
      BatchNewX509SVID: (
        call: ServerUnaryCall<BatchNewX509SvidRequest, BatchNewX509SvidResponse>,
        callback: sendUnaryData<BatchNewX509SvidResponse>,
      ) =>
        this.#unary('BatchNewX509SVID', call, callback, (agent) =>
          this.#batchNewX509Svid(agent, call.request),
        ),
      NewJWTSVID: (
        call: ServerUnaryCall<NewJwtSvidRequest, NewJwtSvidResponse>,
        callback: sendUnaryData<NewJwtSvidResponse>,
      ) => this.#unary('NewJWTSVID', call, callback, (agent) => this.#newJwtSvid(agent, call.request)),
      FetchBundles: (
        call: ServerUnaryCall<Record<string, never>, FetchBundlesResponse>,
        callback: sendUnaryData<FetchBundlesResponse>,
      ) =>
        this.#unary('FetchBundles', call, callback, (agent) => this.#fetchBundles(agent), {
          untrusted: true,
        }),
    };
  }

  #unary<Req, Res>(
    method: string,
    call: ServerUnaryCall<Req, Res>,
    callback: sendUnaryData<Res>,
    handle: (agent: AgentAuthorization) => Promise<Res>,
    options: { untrusted?: boolean } = {},
  ): void {
    const end = this.#o.duration.startTimer({ rpc: method });
    this.#authorize(call, method, options.untrusted)
      .then(handle)
      .then(
        (response) => {
          end({ result: 'ok' });
          callback(null, response);
        },
        (error: unknown) => {
          const refusal = this.#refusal(method, error);
          end({ result: codeOf(refusal) });
          callback(refusal);
        },
      );
  }

  /**
   * The caller's agent ID and what it is authorized for now. Bundles are public: an untrusted node
   * may still fetch them (`untrusted`), so it can authenticate the server when trusted again.
   */
  async #authorize(call: Caller, method: string, untrusted = false): Promise<AgentAuthorization> {
    const { agentId, serial } = authenticateAgent(call, this.#o.ca, this.#o.trustDomain, this.#o.clock);
    // The refresh first: it drops the kept node records that writes since the last one changed.
    await this.#o.journal.refresh();
    const node = await admitNode(agentId, serial, this.#o, method, this.#o.journal.nodes);
    if (!untrusted) refuseUntrusted(node);
    return {
      agentId,
      // Admission leaves the serial presented on this call as the node's current one.
      agentSerial: node.serialNumber,
      ...this.#o.journal.authorize(agentId, node.selectors, nowSeconds(this.#o.clock)),
    };
  }

  async #fetchEntries(call: ServerWritableStream<FetchEntriesRequest, FetchEntriesResponse>): Promise<void> {
    const authorization = await this.#authorize(call, 'FetchEntries');
    const cursor = cursorIn(call.request.cursor);
    const changes = this.#o.journal.changes(cursor, authorization);
    const entries = changes.entries.map(entryMessage);
    const deletedIds = changes.full ? [] : changes.deletedIds;
    const pages = Math.max(1, Math.ceil((entries.length + deletedIds.length) / ENTRY_PAGE_SIZE));
    let deletedFrom = 0;
    for (let page = 0; page < pages; page++) {
      const batch = entries.slice(page * ENTRY_PAGE_SIZE, (page + 1) * ENTRY_PAGE_SIZE);
      const room = ENTRY_PAGE_SIZE - batch.length;
      const deleted = deletedIds.slice(deletedFrom, deletedFrom + room);
      deletedFrom += deleted.length;
      const last = page === pages - 1;
      const message: FetchEntriesResponse = {
        full: changes.full,
        entries: batch,
        deleted_ids: deleted,
        cursor: last ? changes.cursor : null,
      };
      // Respect the transport's backpressure: tens of thousands of entries must not pile up in memory.
      if (!call.write(message)) await drained(call);
      if (call.cancelled) return;
    }
    call.end();
    const kind = changes.full ? 'full' : 'incremental';
    this.#o.entriesSent.inc({ sync: kind }, entries.length + deletedIds.length);
    this.#o.logger.debug(
      {
        agent_id: authorization.agentId,
        sync: kind,
        entries: entries.length,
        deleted: deletedIds.length,
        revision: changes.cursor.revision,
      },
      'entries sent',
    );
  }

  async #batchNewX509Svid(
    agent: AgentAuthorization,
    request: BatchNewX509SvidRequest,
  ): Promise<BatchNewX509SvidResponse> {
    if (request.requests.length > MAX_CSRS_PER_BATCH)
      throw new AttestationError(
        'ERR_AGENT_BAD_REQUEST',
        `${request.requests.length} CSRs in one call; send at most ${MAX_CSRS_PER_BATCH} per call`,
      );
    // Refusals keep the order of a one-by-one pass: the first request whose entry is not the
    // agent's, unless a CSR before it is invalid; the CSRs before it are the only ones read.
    const entries: RegistrationEntry[] = [];
    let refused: AttestationError | undefined;
    for (const item of request.requests) {
      try {
        entries.push(this.#entry(agent, item.entry_id));
      } catch (error) {
        refused = error as AttestationError;
        break;
      }
    }
    const parsed = await settleInOrder(entries, (_, i) =>
      parseCsr(new Uint8Array(request.requests[i]?.csr ?? [])),
    );
    const csrs: ParsedCsr[] = [];
    for (const [i, result] of parsed.entries()) {
      if (result.status === 'rejected')
        throw new AttestationError(
          'ERR_ATTEST_CSR_INVALID',
          `the CSR for entry ${request.requests[i]?.entry_id} is not valid: ${(result.reason as Error).message}`,
          { cause: result.reason },
        );
      csrs.push(result.value);
    }
    if (refused !== undefined) throw refused;
    const minted = await settleInOrder(entries, async (entry, i) => {
      const svid = await this.#o.ca.mintX509Svid({
        spiffeId: SpiffeId.parse(entry.spiffeId),
        publicKey: (csrs[i] as ParsedCsr).publicKey,
        ttl: entry.x509SvidTtl > 0 ? entry.x509SvidTtl : this.#o.defaultX509SvidTtl,
        ...(entry.dnsNames.length > 0 ? { dnsNames: entry.dnsNames } : {}),
      });
      // Every certificate signed is counted and logged, even when another of the batch fails.
      this.#o.svidsIssued.inc({ kind: 'x509', issued_to: 'workload' });
      logX509Issued(this.#o.logger, 'workload', entry.spiffeId, svid, {
        agent_id: agent.agentId,
        agent_serial: agent.agentSerial,
        entry_id: entry.id,
      });
      return { entry_id: entry.id, chain: [...svid.chainDer], expires_at: svid.expiresAt };
    });
    const svids = [];
    for (const result of minted) {
      if (result.status === 'rejected') throw result.reason;
      svids.push(result.value);
    }
    return { svids };
  }

  async #newJwtSvid(agent: AgentAuthorization, request: NewJwtSvidRequest): Promise<NewJwtSvidResponse> {
    const entry = this.#entry(agent, request.entry_id);
    if (request.audience.length === 0 || request.audience.some((a) => a === ''))
      throw new AttestationError('ERR_AGENT_BAD_REQUEST', 'a JWT-SVID needs at least one non-empty audience');
    try {
      checkJwtSvidAudience(request.audience);
    } catch (error) {
      if (isSpiffeError(error))
        throw new AttestationError('ERR_AGENT_BAD_REQUEST', `${error.code}: ${error.message}`);
      throw error;
    }
    const minted = await this.#o.ca.mintJwtSvid({
      spiffeId: SpiffeId.parse(entry.spiffeId),
      audience: request.audience,
      ttl: entry.jwtSvidTtl > 0 ? entry.jwtSvidTtl : this.#o.defaultJwtSvidTtl,
    });
    this.#o.svidsIssued.inc({ kind: 'jwt', issued_to: 'workload' });
    logJwtIssued(
      this.#o.logger,
      'workload',
      { spiffeId: entry.spiffeId, audience: request.audience, expiresAt: minted.expiresAt },
      { agent_id: agent.agentId, agent_serial: agent.agentSerial, entry_id: entry.id },
    );
    return { token: minted.token, expires_at: minted.expiresAt };
  }

  async #fetchBundles(agent: AgentAuthorization): Promise<FetchBundlesResponse> {
    const domains = new Set<string>();
    for (const entry of agent.entries.values()) for (const td of entry.federatesWith) domains.add(td);
    const federated = [];
    for (const td of [...domains].sort()) {
      const stored = await this.#o.datastore.getBundle(td);
      // A trust domain nobody has a bundle for yet is skipped; it appears once an operator sets it.
      if (stored?.federated) federated.push({ trust_domain: td, document: stored.document });
    }
    const active = this.#o.ca.slots.find((s) => s.authority === 'x509' && s.state === 'active');
    return {
      bundle: bundleDocument(this.#o.ca.bundle()),
      active_x509_authority: Buffer.from(active?.certificateDer ?? new Uint8Array()),
      federated,
    };
  }

  #entry(agent: AgentAuthorization, entryId: string): RegistrationEntry {
    const entry = agent.entries.get(entryId);
    if (entry === undefined)
      throw new AttestationError(
        'ERR_AGENT_ENTRY_NOT_AUTHORIZED',
        `entry ${JSON.stringify(entryId)} does not exist or is not parented to agent ${agent.agentId} (directly, through a node alias, or below); sync entries again`,
      );
    return entry;
  }

  #refusal(method: string, error: unknown): Partial<ServerErrorResponse> {
    const refusal =
      error instanceof AttestationError
        ? error
        : new AttestationError('ERR_AGENT_INTERNAL', 'the server failed; see its log', { cause: error });
    if (refusal.code === 'ERR_AGENT_INTERNAL')
      this.#o.logger.error({ err: error, method }, 'agent API failure');
    else this.#o.logger.warn({ method, result: 'refused', reason: refusal.code }, refusal.message);
    const metadata = new Metadata();
    metadata.set('ironroot-error-code', refusal.code);
    return { code: refusal.grpcStatus, details: `${refusal.code}: ${refusal.message}`, metadata };
  }
}

/**
 * Bundle documents by the bundle they marshal. The CA builds one bundle object per journal state and
 * a bundle never changes, so every FetchBundles until the next CA change answers with the same
 * text; marshalling it again (a JWK export per key) was a few per cent of a sync round's CPU.
 */
const bundleDocuments = new WeakMap<SpiffeBundle, string>();

function bundleDocument(bundle: SpiffeBundle): string {
  let document = bundleDocuments.get(bundle);
  if (document === undefined) {
    document = bundle.marshal();
    bundleDocuments.set(bundle, document);
  }
  return document;
}

/** The refusal's code, as the agent reads it from the trailers. */
function codeOf(refusal: Partial<ServerErrorResponse>): string {
  return String(refusal.metadata?.get('ironroot-error-code')[0] ?? 'ERR_AGENT_INTERNAL');
}

/**
 * Resolves when the stream can take more, or the agent went away. A stream the agent cancelled
 * before (while it was being authorized, say) has emitted its last event already: waiting for one
 * would hold the whole sync's entries for good.
 */
export function drained(
  call: ServerWritableStream<FetchEntriesRequest, FetchEntriesResponse>,
): Promise<void> {
  if (call.cancelled || call.destroyed) return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      call.off('drain', done);
      call.off('cancelled', done);
      call.off('close', done);
      resolve();
    };
    call.once('drain', done);
    call.once('cancelled', done);
    call.once('close', done);
  });
}

function cursorIn(message: FetchEntriesRequest['cursor']): SyncCursor | undefined {
  if (!message || message.epoch === '') return undefined;
  return { epoch: message.epoch, revision: message.revision, scope: message.scope };
}

function entryMessage(entry: RegistrationEntry): EntryMessage {
  return {
    id: entry.id,
    spiffe_id: entry.spiffeId,
    parent_id: entry.parentId,
    selectors: entry.selectors.map((s) => `${s.type}:${s.value}`),
    x509_svid_ttl: entry.x509SvidTtl,
    jwt_svid_ttl: entry.jwtSvidTtl,
    dns_names: entry.dnsNames,
    federates_with: entry.federatesWith,
    hint: entry.hint,
    revision_number: entry.revisionNumber,
    created_at: entry.createdAt,
    expires_at: entry.expiresAt,
  };
}

/**
 * CSRs of one call worked on at once. Each is mostly waiting (its two signature checks on libuv's
 * pool, its signature on an HSM session), so a call keeps the pool and the key manager's sessions
 * busy; bounded so that one call of hundreds does not queue ahead of every other agent's.
 */
const CALL_CONCURRENCY = 16;

/** `task` over `items`, at most CALL_CONCURRENCY at once; every outcome, in the items' order. */
async function settleInOrder<T, R>(
  items: readonly T[],
  task: (item: T, index: number) => Promise<R>,
): Promise<PromiseSettledResult<R>[]> {
  const results: PromiseSettledResult<R>[] = new Array(items.length);
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < items.length) {
      const i = next++;
      try {
        results[i] = { status: 'fulfilled', value: await task(items[i] as T, i) };
      } catch (reason) {
        results[i] = { status: 'rejected', reason };
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(CALL_CONCURRENCY, items.length) }, worker));
  return results;
}
