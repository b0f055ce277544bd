/**
 * The agent's gRPC client for the agent API. The server is authenticated by its SVID: the chain
 * must verify against the bundle (the bootstrap bundle at first, the bundle learnt at attestation
 * after) and its SPIFFE ID must be the server's ID of the trust domain. With
 * `insecure_bootstrap` the first attestation skips that check (labs only; logged as a warning).
 *
 * @module
 */
import { X509Certificate } from 'node:crypto';
import type { PeerCertificate } from 'node:tls';
import {
  type ClientDuplexStream,
  type ClientReadableStream,
  credentials,
  Metadata,
  type ServiceError,
} from '@grpc/grpc-js';
import {
  type AttestAgentRequest,
  type AttestAgentResponse,
  agentService,
  type BatchNewX509SvidResponse,
  type ChallengeResponseMessage,
  type EntryMessage,
  type FetchBundlesResponse,
  type FetchEntriesResponse,
  type NewJwtSvidResponse,
  type ReattestChallenge,
  type ReattestRequest,
  type RenewAgentRequest,
  type SyncCursorMessage,
} from '../agent-api/proto.js';
import { AgentError } from './errors.js';

/** One FetchEntries answer, its pages put together. */
export interface EntrySync {
  full: boolean;
  entries: EntryMessage[];
  deletedIds: string[];
  cursor: SyncCursorMessage;
  pages: number;
}

export interface Identity {
  readonly keyPem: string;
  readonly chainPem: string;
}

export interface ClientOptions {
  readonly address: string;
  readonly trustDomain: string;
  /** PEM roots to verify the server with; undefined with insecure bootstrap. */
  readonly bundlePem: string | undefined;
  /** The agent SVID, for mTLS (renewal). */
  readonly identity?: Identity;
  /** How long a call may take; a TPM quote takes a few hundred ms, RSA key creation a few seconds. */
  readonly deadlineMs?: number;
}

export type Challenge = NonNullable<AttestAgentResponse['challenge']>;
export type Result = NonNullable<AttestAgentResponse['result']>;

/** One handshake on a stream: send params, maybe answer one challenge, get the result. */
type Answerer = (challenge: Challenge) => Promise<ChallengeResponseMessage>;

export function serverId(trustDomain: string): string {
  return `spiffe://${trustDomain}/ironroot/server`;
}

export class AgentApiClient {
  readonly #client: InstanceType<ReturnType<typeof agentService>>;
  readonly #deadlineMs: number;

  constructor(options: ClientOptions) {
    const expected = serverId(options.trustDomain);
    const checkServerIdentity = (_host: string, cert: PeerCertificate): Error | undefined => {
      const uri = /URI:(spiffe:\/\/[^,\s]+)/.exec(new X509Certificate(cert.raw).subjectAltName ?? '')?.[1];
      return uri === expected
        ? undefined
        : new Error(`the server presented ${uri ?? 'no SPIFFE ID'}, not ${expected}: refusing to talk to it`);
    };
    const creds = credentials.createSsl(
      options.bundlePem === undefined ? null : Buffer.from(options.bundlePem),
      options.identity ? Buffer.from(options.identity.keyPem) : null,
      options.identity ? Buffer.from(options.identity.chainPem) : null,
      options.bundlePem === undefined ? { rejectUnauthorized: false } : { checkServerIdentity },
    );
    const Ctor = agentService();
    // The server is authenticated by its SPIFFE ID, not by host name; naming the trust domain for
    // TLS keeps Node from sending an IP address as SNI when the server address is one (DEP0123).
    this.#client = new Ctor(options.address, creds, { 'grpc.ssl_target_name_override': options.trustDomain });
    this.#deadlineMs = options.deadlineMs ?? 60_000;
  }

  close(): void {
    this.#client.close();
  }

  #stream<Req>(name: 'AttestAgent' | 'RenewAgent'): ClientDuplexStream<Req, AttestAgentResponse> {
    const method = this.#client[name];
    if (typeof method !== 'function')
      throw new AgentError('ERR_AGENT_PROTOCOL', `agent proto has no ${name}`);
    return method.call(this.#client, { deadline: Date.now() + this.#deadlineMs }) as ClientDuplexStream<
      Req,
      AttestAgentResponse
    >;
  }

  attest(params: NonNullable<AttestAgentRequest['params']>, answer: Answerer): Promise<Result> {
    const call = this.#stream<AttestAgentRequest>('AttestAgent');
    return handshake(call, { params }, async (challenge) => ({
      challenge_response: await answer(challenge),
    }));
  }

  /** Entries changed since `cursor` (all of them without one), every page read before returning. */
  async fetchEntries(cursor: SyncCursorMessage | undefined): Promise<EntrySync> {
    const call = this.#method('FetchEntries')(
      { cursor: cursor ?? null },
      this.#options(),
    ) as ClientReadableStream<FetchEntriesResponse>;
    const sync: EntrySync = {
      full: false,
      entries: [],
      deletedIds: [],
      cursor: { epoch: '', revision: 0, scope: '' },
      pages: 0,
    };
    try {
      for await (const page of call as AsyncIterable<FetchEntriesResponse>) {
        sync.pages++;
        sync.full = page.full;
        for (const entry of page.entries) sync.entries.push(entry);
        for (const id of page.deleted_ids) sync.deletedIds.push(id);
        if (page.cursor) sync.cursor = page.cursor;
      }
    } catch (error) {
      throw toAgentError(error);
    }
    if (sync.cursor.epoch === '')
      throw new AgentError('ERR_AGENT_PROTOCOL', 'the server ended FetchEntries without a cursor');
    return sync;
  }

  batchNewX509Svid(requests: { entry_id: string; csr: Buffer }[]): Promise<BatchNewX509SvidResponse> {
    return this.#unary('BatchNewX509SVID', { requests });
  }

  newJwtSvid(entryId: string, audience: readonly string[]): Promise<NewJwtSvidResponse> {
    return this.#unary('NewJWTSVID', { entry_id: entryId, audience: [...audience] });
  }

  fetchBundles(): Promise<FetchBundlesResponse> {
    return this.#unary('FetchBundles', {});
  }

  #options() {
    return { deadline: Date.now() + this.#deadlineMs };
  }

  #method(name: string): (...args: unknown[]) => unknown {
    const method: unknown = this.#client[name];
    if (typeof method !== 'function')
      throw new AgentError('ERR_AGENT_PROTOCOL', `agent proto has no ${name}`);
    return (...args: unknown[]) => method.apply(this.#client, args);
  }

  #unary<Res>(name: string, request: object): Promise<Res> {
    const method = this.#method(name);
    return new Promise((resolve, reject) => {
      method(request, this.#options(), (error: ServiceError | null, response: Res) =>
        error ? reject(toAgentError(error)) : resolve(response),
      );
    });
  }

  /** The continuous-attestation stream: open as long as the agent runs, so without a deadline. */
  reattest(): ClientDuplexStream<ReattestRequest, ReattestChallenge> {
    return this.#method('Reattest')() as ClientDuplexStream<ReattestRequest, ReattestChallenge>;
  }

  renew(params: NonNullable<RenewAgentRequest['params']>, answer: Answerer): Promise<Result> {
    const call = this.#stream<RenewAgentRequest>('RenewAgent');
    return handshake(call, { params }, async (challenge) => ({
      challenge_response: await answer(challenge),
    }));
  }
}

async function handshake<Req>(
  call: ClientDuplexStream<Req, AttestAgentResponse>,
  first: Req,
  answer: (challenge: Challenge) => Promise<Req>,
): Promise<Result> {
  try {
    call.write(first);
    for await (const message of call as AsyncIterable<AttestAgentResponse>) {
      if (message.challenge) call.write(await answer(message.challenge));
      else if (message.result) {
        call.end();
        return message.result;
      }
    }
    throw new AgentError('ERR_AGENT_PROTOCOL', 'the server closed the stream without a result');
  } catch (error) {
    call.cancel();
    throw toAgentError(error);
  }
}

function isServiceError(error: unknown): error is ServiceError {
  return (
    error instanceof Error && 'code' in error && 'metadata' in error && error.metadata instanceof Metadata
  );
}

/** Server refusals keep their code; transport failures become ERR_AGENT_SERVER_UNAVAILABLE. */
export function toAgentError(error: unknown): AgentError {
  if (error instanceof AgentError) return error;
  if (isServiceError(error)) {
    const code = error.metadata.get('ironroot-error-code')[0];
    if (typeof code === 'string') return new AgentError(code, error.details, { cause: error });
    return new AgentError('ERR_AGENT_SERVER_UNAVAILABLE', `the server is unreachable: ${error.details}`, {
      cause: error,
    });
  }
  return new AgentError('ERR_AGENT_PROTOCOL', (error as Error).message, { cause: error });
}
