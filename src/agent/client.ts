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
import { TrustDomain, X509Bundle } from '../spiffe/index.js';
import { peerChain } from '../workload-api/tls.js';
import { AgentError } from './errors.js';
import { type BundleSource, judgeServerChain, presentedChain, type TrustBundle } from './server-cert.js';

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
  /** Where `bundlePem` came from, for the messages of a refusal; default: trust_bundle. */
  readonly bundleSource?: BundleSource;
  /** The agent SVID, for mTLS (renewal). */
  readonly identity?: Identity;
  /** How long a call may take; a TPM quote takes a few hundred ms, RSA key creation a few seconds. */
  readonly deadlineMs?: number;
}

export type Challenge = NonNullable<AttestAgentResponse['challenge']>;
export type Result = NonNullable<AttestAgentResponse['result']>;

/** One handshake on a stream: send params, maybe answer one challenge, get the result. */
type Answerer = (challenge: Challenge) => Promise<ChallengeResponseMessage>;

export class AgentApiClient {
  readonly #client: InstanceType<ReturnType<typeof agentService>>;
  readonly #deadlineMs: number;
  readonly #address: string;
  readonly #trustDomain: string;
  readonly #bundle: TrustBundle | undefined;
  /** The last refusal of the server's certificate: grpc-js reports it only as an unavailable server. */
  #refused: AgentError | undefined;

  constructor(options: ClientOptions) {
    const { bundlePem } = options;
    this.#address = options.address;
    this.#trustDomain = options.trustDomain;
    this.#bundle =
      bundlePem === undefined
        ? undefined
        : {
            authorities: X509Bundle.parsePem(TrustDomain.parse(options.trustDomain), bundlePem).authorities,
            source: options.bundleSource ?? { key: 'trust_bundle', location: '(given)' },
          };
    const checkServerIdentity = (_host: string, cert: PeerCertificate): Error | undefined => {
      if (this.#bundle === undefined) return undefined;
      this.#refused = judgeServerChain(peerChain(cert), options.trustDomain, this.#bundle);
      return this.#refused;
    };
    const creds = credentials.createSsl(
      bundlePem === undefined ? null : Buffer.from(bundlePem),
      options.identity ? Buffer.from(options.identity.keyPem) : null,
      options.identity ? Buffer.from(options.identity.chainPem) : null,
      bundlePem === undefined ? { rejectUnauthorized: false } : { checkServerIdentity },
    );
    const Ctor = agentService();
    // The server is authenticated by its SPIFFE ID, not by host name; naming the trust domain for
    // TLS keeps Node from sending an IP address as SNI when the server address is one (DEP0123).
    // presentedChain sends the same name.
    this.#client = new Ctor(options.address, creds, { 'grpc.ssl_target_name_override': options.trustDomain });
    this.#deadlineMs = options.deadlineMs ?? 60_000;
  }

  close(): void {
    this.#client.close();
  }

  /** An error of a call as an AgentError: a refused server certificate by its own code. */
  toError(error: unknown): AgentError {
    const e = toAgentError(error);
    return e.code === 'ERR_AGENT_SERVER_UNAVAILABLE' && this.#refused !== undefined ? this.#refused : e;
  }

  /**
   * {@link toError}, and for a server that seems unavailable, a look at the certificate it presents:
   * a TLS handshake that failed on the bundle is a misconfiguration, named by its cause, not an outage.
   */
  async explain(error: unknown): Promise<AgentError> {
    const e = this.toError(error);
    if (e.code !== 'ERR_AGENT_SERVER_UNAVAILABLE' || this.#bundle === undefined) return e;
    const chain = await presentedChain(this.#address, this.#trustDomain);
    return (chain && judgeServerChain(chain, this.#trustDomain, this.#bundle)) ?? e;
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
    })).catch(async (error: unknown) => {
      throw await this.explain(error);
    });
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
      throw await this.explain(error);
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
        error ? void this.explain(error).then(reject, reject) : resolve(response),
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
    })).catch(async (error: unknown) => {
      throw await this.explain(error);
    });
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

/** Whether `error` is a refusal the server answered with (its own code), which proves it reachable. */
export function isServerAnswer(error: unknown): boolean {
  const cause = error instanceof AgentError ? error.cause : undefined;
  return isServiceError(cause) && cause.metadata.get('ironroot-error-code').length > 0;
}

/** Server refusals keep their code; transport failures become ERR_AGENT_SERVER_UNAVAILABLE. */
function toAgentError(error: unknown): AgentError {
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
