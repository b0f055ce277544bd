/**
 * The agent API (proto/ironroot/agent/v1/agent.proto) over TLS with the server's SVID: node
 * attestation (TPM or join token) and renewal. Every decision is logged as one structured event
 * (agent_id, attestation_method, result, reason, duration_ms) and counted by result.
 *
 * @module
 */
import {
  Server as GrpcServer,
  Metadata,
  type ServerDuplexStream,
  type ServerErrorResponse,
} from '@grpc/grpc-js';
import type { Counter, Histogram } from 'prom-client';
import {
  type AttestAgentRequest,
  type AttestAgentResponse,
  agentService,
  type ChallengeResponseMessage,
  type ReattestChallenge,
  type ReattestRequest,
  type RenewAgentRequest,
  type TpmEvidenceMessage,
} from '../../agent-api/proto.js';
import { type ParsedCsr, parseCsr, SpiffeId } from '../../spiffe/index.js';
import { parseTpm2bPublic } from '../../tpm/index.js';
import type { CertificateAuthority } from '../ca/authority.js';
import { logX509Issued } from '../ca/issuance-log.js';
import { type Clock, nowSeconds } from '../clock.js';
import type { AttestedNode, Datastore, NodeRenewal } from '../datastore/datastore.js';
import { serverSpiffeId } from '../identity.js';
import type { Logger } from '../log.js';
import type { EkJob, EkJudgement } from '../nodeattestor/ek-judge.js';
import type { EkWorkerPool } from '../nodeattestor/ek-pool.js';
import { AttestationError } from '../nodeattestor/errors.js';
import { NonceStore, nonceExpired } from '../nodeattestor/nonces.js';
import type { TpmPolicy } from '../nodeattestor/policy.js';
import {
  admitAk,
  admitEk,
  bootSubject,
  type IssuedChallenge,
  issueChallenge,
  lastQuote,
  ProfileViolationError,
  type TpmAnswer,
  type TpmEvidence,
  tpmSelectors,
  verifyAnswer,
} from '../nodeattestor/tpm.js';
import { hashJoinToken, joinTokenAlias } from '../registration/service.js';
import { admitAgent, admitNode, authenticateAgent, refuseBanned } from './admission.js';
import { AgentListener } from './listener.js';
import { storedNodes } from './nodes.js';
import { peerAddress, RateLimiter } from './ratelimit.js';
import type { ContinuousAttestation } from './reattest.js';
import { refuseUntrusted, type SyncHandlers } from './sync.js';
import { ServerTls } from './tls.js';

/** Join-token agents are named by this many hex digits of the token's SHA-256, as the audit log does. */
const TOKEN_ID_LENGTH = 12;
const ACTOR = 'agent-api';
/** How long stop() lets calls in flight finish before closing every connection. */
const SHUTDOWN_GRACE_MS = 2000;
/** How long to wait for each stream message when no TPM policy sets a nonce lifetime. */
const DEFAULT_WAIT_SECONDS = 60;
/**
 * Largest message an agent may send, in bytes (grpc-js's default is 4 MiB). The largest is an answer
 * with the measured-boot event log, which stays well under 1 MiB on real machines; a longer message
 * is refused by gRPC (RESOURCE_EXHAUSTED) from its length prefix, before it is read or decoded.
 */
export const MAX_AGENT_MESSAGE_BYTES = 2 * 1024 * 1024;

export interface AgentApiOptions {
  address: string;
  trustDomain: string;
  ca: CertificateAuthority;
  datastore: Datastore;
  clock: Clock;
  logger: Logger;
  /** Undefined: TPM attestation is not configured, and refused. */
  tpmPolicy: TpmPolicy | undefined;
  /** The threads that judge EK certificates; set whenever tpmPolicy is. */
  ekWorkers?: EkWorkerPool;
  agentSvidTtl: number;
  /** TTL of the server's own SVID on this listener. */
  serverSvidTtl: number;
  rateLimit: { perSecond: number; burst: number };
  attestations: Counter<'method' | 'result'>;
  /** Time from call to decision, by method, operation and result (ok, refused). */
  attestationDuration: Histogram<'method' | 'operation' | 'result'>;
  /** Agent SVIDs signed at attestation and renewal. */
  svidsIssued: Counter<'kind' | 'issued_to'>;
  /** Entry sync, workload SVIDs and bundles; undefined serves attestation and renewal only. */
  sync?: SyncHandlers;
  /** Continuous attestation of TPM nodes; undefined when TPM attestation is not configured. */
  reattest?: ContinuousAttestation;
}

type Duplex<Req> = ServerDuplexStream<Req, AttestAgentResponse>;

interface Decision {
  agentId: string;
  method: string;
}

export class AgentApiServer {
  readonly #o: AgentApiOptions;
  readonly #grpc = new GrpcServer({ 'grpc.max_receive_message_length': MAX_AGENT_MESSAGE_BYTES });
  readonly #tls: ServerTls;
  readonly #listener: AgentListener;
  readonly #nonces: NonceStore;
  readonly #limiter: RateLimiter;
  /** How long each stream message may take: the nonce lifetime. */
  readonly #waitSeconds: number;

  constructor(options: AgentApiOptions) {
    this.#o = options;
    this.#tls = new ServerTls({
      ca: options.ca,
      serverId: serverSpiffeId(options.trustDomain),
      ttl: options.serverSvidTtl,
      clock: options.clock,
      logger: options.logger,
    });
    this.#listener = new AgentListener(this.#grpc, this.#tls, options.logger);
    this.#waitSeconds = options.tpmPolicy?.nonceTtl ?? DEFAULT_WAIT_SECONDS;
    this.#nonces = new NonceStore({
      datastore: options.datastore,
      clock: options.clock,
      ttlSeconds: this.#waitSeconds,
    });
    this.#limiter = new RateLimiter(options.rateLimit.perSecond, options.rateLimit.burst, options.clock);
  }

  /** Starts listening; resolves to the bound port. */
  async start(): Promise<number> {
    const material = await this.#tls.start();
    this.#grpc.addService(agentService().service, {
      AttestAgent: (call: Duplex<AttestAgentRequest>) => {
        void this.#run(call, 'attest', (d) => this.#attest(call, d));
      },
      RenewAgent: (call: Duplex<RenewAgentRequest>) => {
        void this.#run(call, 'renew', (d) => this.#renew(call, d));
      },
      Reattest: (call: ServerDuplexStream<ReattestRequest, ReattestChallenge>) => {
        void this.#reattest(call);
      },
      ...this.#o.sync?.implementation(),
    });
    return this.#listener.listen(this.#o.address, material);
  }

  async stop(): Promise<void> {
    this.#tls.stop();
    this.#listener.close();
    // Re-quote streams stay open for good; ending them lets the calls below finish at once.
    this.#o.reattest?.stop();
    // Calls in flight get a moment to finish; agents' idle connections (their sync loops keep
    // channels alive) must not hold the shutdown up, so after that everything is cut.
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      new Promise<void>((resolve) => this.#grpc.tryShutdown(() => resolve())),
      new Promise<void>((resolve) => {
        timer = setTimeout(resolve, SHUTDOWN_GRACE_MS);
      }),
    ]);
    clearTimeout(timer);
    this.#grpc.forceShutdown();
  }

  async #run<Req>(
    call: Duplex<Req>,
    kind: 'attest' | 'renew',
    handle: (decision: Decision) => Promise<AttestAgentResponse>,
  ): Promise<void> {
    const started = performance.now();
    const decision: Decision = { agentId: '', method: '' };
    const address = peerAddress(call.getPeer());
    const log = (result: string, reason: string, refusal?: AttestationError) => {
      const seconds = (performance.now() - started) / 1000;
      const fields = {
        // Before the EK (or token) is known there is no agent ID, and before params no method: those
        // fields are left out rather than logged empty; `peer` says who it was.
        ...(decision.agentId !== '' ? { agent_id: decision.agentId } : {}),
        ...(decision.method !== '' ? { attestation_method: decision.method } : {}),
        operation: kind,
        peer: address,
        result,
        reason,
        duration_ms: Math.round(seconds * 1000),
        // What the agent was told, and for a profile refusal every violated rule, so the log alone explains it.
        ...(refusal === undefined ? {} : { detail: refusal.message }),
        ...(refusal instanceof ProfileViolationError
          ? { violations: Object.fromEntries(refusal.violations) }
          : {}),
      };
      const method = decision.method || 'unknown';
      this.#o.attestations.inc({ method, result: result === 'ok' ? 'ok' : reason });
      this.#o.attestationDuration.observe({ method, operation: kind, result }, seconds);
      if (result === 'ok') this.#o.logger.info(fields, `agent ${kind} accepted`);
      else this.#o.logger.warn(fields, `agent ${kind} refused: ${reason}`);
    };
    try {
      if (!this.#limiter.take(address))
        throw new AttestationError(
          'ERR_ATTEST_RATE_LIMITED',
          `too many attestations from ${address}; retry after a moment (attestation_rate_limit)`,
        );
      const response = await handle(decision);
      call.write(response);
      call.end();
      log('ok', '');
    } catch (error) {
      const refusal =
        error instanceof AttestationError
          ? error
          : new AttestationError('ERR_ATTEST_INTERNAL', 'the server failed while attesting; see its log', {
              cause: error,
            });
      if (refusal.code === 'ERR_ATTEST_INTERNAL') this.#o.logger.error({ err: error }, 'agent API failure');
      log('refused', refusal.code, refusal);
      if (refusal instanceof ProfileViolationError && decision.agentId !== '')
        await this.#recordProfileRefusal(decision.agentId, refusal);
      call.emit('error', statusOf(refusal));
    }
  }

  /**
   * A known node whose boot no longer fits its profiles is untrusted from now on, with every violated
   * rule on its record for `agent show`; a node never attested has no record to keep them on.
   */
  async #recordProfileRefusal(agentId: string, refusal: ProfileViolationError): Promise<void> {
    try {
      if ((await this.#o.datastore.getNode(agentId)) === undefined) return;
      await this.#o.datastore.recordNodeTrust(
        agentId,
        {
          trust: {
            state: 'untrusted',
            code: refusal.code,
            reason: refusal.message,
            details: JSON.stringify(Object.fromEntries(refusal.violations)),
            changedAt: nowSeconds(this.#o.clock),
          },
        },
        ACTOR,
      );
    } catch (error) {
      this.#o.logger.error(
        { err: error, agent_id: agentId },
        'could not record the profile refusal on the node',
      );
    }
  }

  /** Opens a node's re-quote stream: the agent SVID names the node, which must be an attested TPM node. */
  async #reattest(call: ServerDuplexStream<ReattestRequest, ReattestChallenge>): Promise<void> {
    try {
      this.#policy();
      const node = await admitAgent(call, this.#o, 'Reattest');
      const agentId = node.spiffeId;
      if (node.attestationType !== 'tpm' || this.#o.reattest === undefined)
        throw new AttestationError(
          'ERR_REATTEST_NOT_TPM',
          `agent ${agentId} attested by ${node.attestationType}: only TPM nodes are re-quoted`,
        );
      const fields = { agent_id: agentId, agent_serial: node.serialNumber };
      if (this.#o.reattest.attach(agentId, call)) this.#o.logger.debug(fields, 're-quote stream opened');
      else this.#o.logger.debug(fields, 're-quote stream closed by the agent before it was opened');
    } catch (error) {
      const refusal =
        error instanceof AttestationError
          ? error
          : new AttestationError('ERR_ATTEST_INTERNAL', 'the server failed; see its log', { cause: error });
      if (refusal.code === 'ERR_ATTEST_INTERNAL') this.#o.logger.error({ err: error }, 'agent API failure');
      else
        this.#o.logger.warn({ method: 'Reattest', result: 'refused', reason: refusal.code }, refusal.message);
      call.emit('error', statusOf(refusal));
    }
  }

  async #attest(call: Duplex<AttestAgentRequest>, decision: Decision): Promise<AttestAgentResponse> {
    const messages = reader(call, this.#waitSeconds);
    const first = await messages.next();
    const params = first.params;
    if (first.step !== 'params' || !params)
      throw badRequest('the first AttestAgent message must carry params');
    decision.method = params.method;
    const csr = await readCsr(params.csr);
    if (params.method === 'join_token') return this.#attestJoinToken(params.join_token, csr, decision);
    if (params.method !== 'tpm')
      throw badRequest(
        `attestation method ${JSON.stringify(params.method)} is unknown; use tpm or join_token`,
      );
    const policy = this.#policy();
    const evidence = tpmEvidence(params.tpm);
    const ek = await admitEk(evidence, policy, new Date(this.#o.clock.now()), this.#judgeEk);
    decision.agentId = `spiffe://${this.#o.trustDomain}/agent/tpm/${ek.ekHash}`;
    refuseBanned(decision.agentId, (await this.#o.datastore.getNodeBan(decision.agentId)) !== undefined);
    const existing = await this.#o.datastore.getNode(decision.agentId);
    const ak = admitAk(evidence.akPublic);
    const challenge = await issueChallenge(this.#nonces, ek.ekPublic, ak);
    call.write(challengeMessage(challenge, policy));
    const answer = await messages.answer();
    const verified = await verifyAnswer({
      answer: tpmAnswer(answer.challenge_response),
      challenge,
      ak,
      policy,
      nonces: this.#nonces,
      subject: bootSubject(ek),
    });
    const now = nowSeconds(this.#o.clock);
    const result = await this.#sign(decision.agentId, csr);
    await this.#o.datastore.upsertNode(
      {
        spiffeId: decision.agentId,
        attestationType: 'tpm',
        // Only the certificate just issued: every earlier one of this node is refused from now on.
        serialNumber: result.serial,
        svidAuthority: result.svidAuthority,
        expiresAt: result.response.result?.expires_at ?? 0,
        selectors: tpmSelectors(ek, verified),
        tpm: {
          ekHash: ek.ekHash,
          ...(ek.issuer !== undefined ? { ekIssuer: ek.issuer } : {}),
          akPublic: evidence.akPublic,
          lastQuote: Buffer.from(JSON.stringify(lastQuote(verified.quote, now))),
          resetCount: verified.quote.clockInfo.resetCount,
          eventLog: eventLogOf(answer.challenge_response),
        },
        attestationCount: (existing?.attestationCount ?? 0) + 1,
        createdAt: existing?.createdAt ?? now,
      },
      ACTOR,
    );
    this.#o.reattest?.attested(decision.agentId);
    return result.response;
  }

  async #attestJoinToken(token: string, csr: ParsedCsr, decision: Decision): Promise<AttestAgentResponse> {
    if (token === '')
      throw new AttestationError('ERR_ATTEST_BAD_REQUEST', 'join_token attestation needs a token');
    const now = nowSeconds(this.#o.clock);
    // Tokens are looked up by their SHA-256 (an index lookup, never a text comparison); the token
    // itself is not logged.
    const tokenHash = hashJoinToken(token);
    const agentId = `spiffe://${this.#o.trustDomain}/agent/join_token/${tokenHash.slice(0, TOKEN_ID_LENGTH)}`;
    refuseBanned(agentId, (await this.#o.datastore.getNodeBan(agentId)) !== undefined);
    const consumed = await this.#o.datastore.consumeJoinToken(tokenHash, now, ACTOR);
    if (consumed === undefined)
      throw new AttestationError(
        'ERR_ATTEST_JOIN_TOKEN_INVALID',
        'join token is unknown, already used or expired; generate a new one with "ironroot-server token generate"',
      );
    decision.agentId = agentId;
    const result = await this.#sign(decision.agentId, csr);
    await this.#o.datastore.upsertNode(
      {
        spiffeId: decision.agentId,
        attestationType: 'join_token',
        serialNumber: result.serial,
        svidAuthority: result.svidAuthority,
        expiresAt: result.response.result?.expires_at ?? 0,
        selectors: [{ type: 'join_token', value: tokenHash.slice(0, TOKEN_ID_LENGTH) }],
        attestationCount: 1,
        createdAt: now,
      },
      ACTOR,
      consumed.spiffeId === undefined
        ? undefined
        : joinTokenAlias(this.#o.trustDomain, decision.agentId, consumed.spiffeId),
    );
    return result.response;
  }

  async #renew(call: Duplex<RenewAgentRequest>, decision: Decision): Promise<AttestAgentResponse> {
    const caller = authenticateAgent(call, this.#o.ca, this.#o.trustDomain, this.#o.clock);
    decision.agentId = caller.agentId;
    const node = await admitNode(
      caller.agentId,
      caller.serial,
      this.#o,
      'RenewAgent',
      storedNodes(this.#o.datastore),
    );
    decision.method = node.attestationType;
    refuseUntrusted(node);
    const messages = reader(call, this.#waitSeconds);
    const first = await messages.next();
    if (first.step !== 'params' || !first.params)
      throw badRequest('the first RenewAgent message must carry params');
    const csr = await readCsr(first.params.csr);
    if (node.attestationType !== 'tpm') {
      const result = await this.#sign(decision.agentId, csr);
      await this.#recordRenewal(node, {
        newSerialNumber: result.serial,
        ...(result.svidAuthority !== undefined ? { svidAuthority: result.svidAuthority } : {}),
        expiresAt: result.response.result?.expires_at ?? 0,
      });
      return result.response;
    }
    const policy = this.#policy();
    if (node.tpm === undefined)
      throw new AttestationError('ERR_AGENT_AK_UNKNOWN', 'no AK is recorded for this node; attest again');
    const evidence = tpmEvidence(first.params.tpm);
    const ek = await admitEk(evidence, policy, new Date(this.#o.clock.now()), this.#judgeEk);
    if (ek.ekHash !== node.tpm.ekHash)
      throw new AttestationError(
        'ERR_ATTEST_EK_MISMATCH',
        'the EK sent for renewal is not the EK this agent attested with; attest again',
      );
    const ak = parseTpm2bPublic(node.tpm.akPublic);
    const challenge = await issueChallenge(this.#nonces, undefined, ak);
    call.write(challengeMessage(challenge, policy));
    const answer = await messages.answer();
    const verified = await verifyAnswer({
      answer: tpmAnswer(answer.challenge_response),
      challenge,
      ak,
      policy,
      nonces: this.#nonces,
      subject: bootSubject(ek),
    });
    const result = await this.#sign(decision.agentId, csr);
    await this.#recordRenewal(node, {
      newSerialNumber: result.serial,
      ...(result.svidAuthority !== undefined ? { svidAuthority: result.svidAuthority } : {}),
      expiresAt: result.response.result?.expires_at ?? 0,
      tpm: {
        selectors: tpmSelectors(ek, verified),
        lastQuote: Buffer.from(JSON.stringify(lastQuote(verified.quote, nowSeconds(this.#o.clock)))),
        resetCount: verified.quote.clockInfo.resetCount,
        eventLog: eventLogOf(answer.challenge_response),
      },
    });
    return result.response;
  }

  /**
   * Writes the renewal unless the node changed under it: the SVID just signed is then never
   * answered (its serial is not recorded, so no call would accept it), and the agent is told why.
   */
  async #recordRenewal(admitted: AttestedNode, renewal: Omit<NodeRenewal, 'admittedSerial'>): Promise<void> {
    const admittedSerial = admitted.serialNumber;
    const outcome = await this.#o.datastore.renewNode(
      admitted.spiffeId,
      { ...renewal, admittedSerial },
      ACTOR,
    );
    if (outcome.renewed) return;
    const now = outcome.node;
    if (now === undefined)
      throw new AttestationError(
        'ERR_AGENT_NOT_ATTESTED',
        'this agent was evicted while it renewed; attest again',
      );
    refuseUntrusted(now);
    throw new AttestationError(
      'ERR_AGENT_CERT_SUPERSEDED',
      `while this renewal ran, an attestation or another renewal of agent ${admitted.spiffeId} replaced the SVID it was admitted with (serial ${admittedSerial}, now ${now.serialNumber}); use the newest agent SVID, or attest again`,
    );
  }

  readonly #judgeEk = (job: EkJob): Promise<EkJudgement> => {
    if (this.#o.ekWorkers === undefined)
      throw new AttestationError('ERR_ATTEST_INTERNAL', 'this server has no EK workers; see its log');
    return this.#o.ekWorkers.judge(job);
  };

  #policy(): TpmPolicy {
    if (this.#o.tpmPolicy === undefined)
      throw new AttestationError(
        'ERR_ATTEST_METHOD_DISABLED',
        'TPM attestation is not configured on this server; set tpm_attestation in its config (or use join_token)',
      );
    return this.#o.tpmPolicy;
  }

  async #sign(
    agentId: string,
    csr: ParsedCsr,
  ): Promise<{ response: AttestAgentResponse; serial: string; svidAuthority: string }> {
    const minted = await this.#o.ca.mintX509Svid({
      spiffeId: SpiffeId.parse(agentId),
      publicKey: csr.publicKey,
      ttl: this.#o.agentSvidTtl,
    });
    const leaf = minted.chain[0];
    this.#o.svidsIssued.inc({ kind: 'x509', issued_to: 'agent' });
    logX509Issued(this.#o.logger, 'agent', agentId, minted);
    return {
      serial: leaf?.serialNumber ?? '',
      svidAuthority: minted.authority,
      response: {
        result: {
          spiffe_id: agentId,
          svid_chain: minted.chain.map((c) => c.raw),
          expires_at: minted.expiresAt,
          bundle: this.#o.ca
            .bundle()
            .toX509Bundle()
            .authorities.map((c) => c.raw),
        },
      },
    };
  }
}

function statusOf(refusal: AttestationError): Partial<ServerErrorResponse> {
  const metadata = new Metadata();
  metadata.set('ironroot-error-code', refusal.code);
  return { code: refusal.grpcStatus, details: `${refusal.code}: ${refusal.message}`, metadata };
}

/** The event log just verified, kept so that re-quotes need send only what was appended. */
function eventLogOf(message: ChallengeResponseMessage | null | undefined): Uint8Array {
  return new Uint8Array(message?.event_log ?? []);
}

function badRequest(message: string): AttestationError {
  return new AttestationError('ERR_ATTEST_BAD_REQUEST', message);
}

async function readCsr(bytes: Buffer): Promise<ParsedCsr> {
  try {
    return await parseCsr(new Uint8Array(bytes));
  } catch (cause) {
    throw new AttestationError(
      'ERR_ATTEST_CSR_INVALID',
      `the CSR is not valid: ${(cause as Error).message}`,
      {
        cause,
      },
    );
  }
}

function tpmEvidence(message: TpmEvidenceMessage | null | undefined): TpmEvidence {
  if (!message || message.ek_public.length === 0)
    throw badRequest('tpm attestation needs the EK public area');
  return {
    ekCertificates: message.ek_certificates.map((c) => new Uint8Array(c)),
    ekPublic: new Uint8Array(message.ek_public),
    akPublic: new Uint8Array(message.ak_public),
  };
}

function tpmAnswer(message: ChallengeResponseMessage | null | undefined): TpmAnswer {
  if (!message) throw badRequest('the second message must carry the challenge response');
  return {
    activatedSecret: new Uint8Array(message.activated_secret),
    quote: new Uint8Array(message.quote),
    signature: new Uint8Array(message.signature),
    pcrValues: message.pcr_values.map((v) => new Uint8Array(v)),
    eventLog: new Uint8Array(message.event_log),
  };
}

function challengeMessage(challenge: IssuedChallenge, policy: TpmPolicy): AttestAgentResponse {
  return {
    challenge: {
      credential_blob: challenge.credential?.credentialBlob ?? new Uint8Array(),
      encrypted_secret: challenge.credential?.secret ?? new Uint8Array(),
      nonce: challenge.nonce,
      pcr_selection: policy.selection.map((s) => ({ hash_alg: s.hash, pcrs: [...s.pcrs] })),
    },
  };
}

/**
 * Reads a stream message by message; a stream that ends early is a bad request. Each message must
 * come within `waitSeconds` (the nonce lifetime): a peer that opens a stream and stays silent must
 * not hold server resources. An answer to a challenge that does not come in time is late: its nonce
 * has expired.
 */
function reader<Req>(
  call: Duplex<Req>,
  waitSeconds: number,
): { next(): Promise<Req>; answer(): Promise<Req> } {
  const iterator = (call as AsyncIterable<Req>)[Symbol.asyncIterator]();
  const read = async (late: () => AttestationError): Promise<Req> => {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(late()), waitSeconds * 1000);
    });
    // A stream that breaks (the peer cancelled, or gRPC refused a message over
    // MAX_AGENT_MESSAGE_BYTES and closed the call) is the peer's doing, not a server failure.
    const broken = (cause: unknown): never => {
      throw badRequest(
        `the stream broke before the handshake finished (${(cause as Error).message}); start a new one`,
      );
    };
    try {
      const item = await Promise.race([iterator.next().catch(broken), timeout]);
      if (item.done) throw badRequest('the agent closed the stream before the handshake finished');
      return item.value;
    } finally {
      clearTimeout(timer);
    }
  };
  return {
    next: () =>
      read(() =>
        badRequest(
          `the agent sent nothing for ${waitSeconds}s; the handshake was abandoned, start a new one`,
        ),
      ),
    answer: () => read(() => nonceExpired(waitSeconds)),
  };
}
