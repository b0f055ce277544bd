import { X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import type { ClientDuplexStream } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TpmAttestor } from '../../src/agent/attestor/tpm.js';
import { AgentApiClient } from '../../src/agent/client.js';
import type { StoredAk } from '../../src/agent/store.js';
import type {
  QuoteChallengeMessage,
  ReattestChallenge,
  ReattestOutcomeMessage,
  ReattestRequest,
} from '../../src/agent-api/proto.js';
import { type Swtpm, startSwtpm } from '../helpers/swtpm.js';
import { agileLog } from '../tpm/eventlog/build-log.js';
import { evilAttest } from './evil-agent.js';
import { startAttestServer, TD, type TestServer, until } from './harness.js';

/**
 * A test-only agent on the Reattest stream: it attests honestly with the real TPM, then answers
 * each re-quote challenge as the test says, to a real server that must refuse every forgery by code.
 */
let swtpm: Swtpm;
let server: TestServer;
let client: AgentApiClient;
let call: ClientDuplexStream<ReattestRequest, ReattestChallenge>;
let ak: StoredAk;
let agentId: string;
const received: ReattestChallenge[] = [];
let read = 0;
const attestor = () => new TpmAttestor({ tcti: swtpm.tcti, ek: 'rsa2048', eventLogPath: 'none' });

beforeAll(async () => {
  swtpm = await startSwtpm();
  server = await startAttestServer({
    tpm_attestation: { measured_boot: 'none', ek_trust: 'any', reattest_interval: '2s' },
  });
  const attested = await evilAttest(server, swtpm.tcti);
  if (!attested.result || !attested.ak || !attested.key)
    throw new Error(`attestation failed: ${attested.error}`);
  ak = attested.ak;
  agentId = attested.result.spiffe_id;
  client = new AgentApiClient({
    address: server.address,
    trustDomain: TD,
    bundlePem: readFileSync(server.bundleFile, 'utf8'),
    identity: {
      keyPem: attested.key.export({ format: 'pem', type: 'pkcs8' }).toString(),
      chainPem: attested.result.svid_chain.map((der) => new X509Certificate(der).toString()).join(''),
    },
  });
  call = client.reattest();
  call.on('data', (message: ReattestChallenge) => received.push(message));
  call.on('error', () => {});
});

afterAll(async () => {
  call?.cancel();
  client?.close();
  await server?.stop();
  await swtpm?.stop();
});

/** The next message of the kind, skipping none: challenges and outcomes alternate. */
async function next<K extends 'challenge' | 'outcome'>(kind: K): Promise<NonNullable<ReattestChallenge[K]>> {
  const message = await until(`a ${kind}`, () => received[read]);
  read++;
  const value = message[kind];
  if (!value) throw new Error(`expected a ${kind}, got ${JSON.stringify(message)}`);
  return value as NonNullable<ReattestChallenge[K]>;
}

/** What an honest agent sends: a quote of the selection by the recorded AK, qualified by the nonce. */
async function honest(challenge: QuoteChallengeMessage, key: StoredAk = ak): Promise<ReattestRequest> {
  const answer = await attestor().answer(key, {
    credentialBlob: new Uint8Array(),
    encryptedSecret: new Uint8Array(),
    nonce: new Uint8Array(challenge.nonce),
    selection: challenge.pcr_selection.map((s) => ({ hash: s.hash_alg, pcrs: s.pcrs })),
  });
  return {
    challenge_id: challenge.challenge_id,
    quote: answer.quote,
    signature: answer.signature,
    pcr_values: answer.pcr_values,
    event_log_prior_length: 0,
    event_log_tail: Buffer.alloc(0),
  };
}

async function answer(request: ReattestRequest): Promise<ReattestOutcomeMessage> {
  call.write(request);
  return next('outcome');
}

async function storedCode(): Promise<string | undefined> {
  return (await server.server.datastore.getNode(agentId))?.trust.code;
}

describe('re-quote answers a forging agent sends', () => {
  let first: ReattestRequest;

  it('an honest answer passes', async () => {
    first = await honest(await next('challenge'));
    expect(await answer(first)).toMatchObject({ trusted: true, code: '' });
  });

  it('a quote replayed from the last challenge is refused as a replayed nonce', async () => {
    const challenge = await next('challenge');
    const outcome = await answer({ ...first, challenge_id: challenge.challenge_id });
    expect(outcome).toMatchObject({ trusted: false, code: 'ERR_ATTEST_NONCE_REPLAYED' });
    expect(await storedCode()).toBe('ERR_ATTEST_NONCE_REPLAYED');
    // The node is not lost for good: an honest answer to the next challenge passes again.
    expect(await answer(await honest(await next('challenge')))).toMatchObject({ trusted: true });
  });

  it('a log tail claiming to follow more bytes than the server holds is refused', async () => {
    const request = await honest(await next('challenge'));
    const outcome = await answer({
      ...request,
      event_log_prior_length: 5,
      event_log_tail: Buffer.from('tail'),
    });
    expect(outcome).toMatchObject({ trusted: false, code: 'ERR_REATTEST_EVENTLOG_OFFSET' });
    expect(outcome.reason).toMatch(/follows 5 bytes, but the server holds 0/);
  });

  it('a quote by another AK of the same TPM is refused: only the recorded AK counts', async () => {
    const other = (await attestor().evidence()).ak;
    const outcome = await answer(await honest(await next('challenge'), other));
    expect(outcome).toMatchObject({ trusted: false, code: 'ERR_ATTEST_QUOTE_SIGNATURE' });
  });

  it('a log that does not parse is refused', async () => {
    const request = await honest(await next('challenge'));
    const outcome = await answer({ ...request, event_log_tail: Buffer.from('not an event log at all') });
    expect(outcome).toMatchObject({ trusted: false, code: 'ERR_ATTEST_EVENTLOG_REPLAY' });
  });

  it('a whole log that does not begin with the stored one is refused as not an extension', async () => {
    // An event-less log (its Spec ID header only) replays to any PCRs: the server stores it.
    const sha256Only = agileLog(['sha256'], []);
    const stored = await answer({ ...(await honest(await next('challenge'))), event_log_tail: sha256Only });
    expect(stored).toMatchObject({ trusted: true });
    expect(
      Buffer.from((await server.server.datastore.getNode(agentId, { eventLog: true }))?.tpm?.eventLog ?? []),
    ).toEqual(sha256Only);
    const outcome = await answer({
      ...(await honest(await next('challenge'))),
      event_log_tail: agileLog(['sha1', 'sha256'], []),
    });
    expect(outcome).toMatchObject({ trusted: false, code: 'ERR_REATTEST_EVENTLOG_NOT_EXTENSION' });
    // The same log again, as a tail after what the server holds, is an extension and passes.
    expect(
      await answer({ ...(await honest(await next('challenge'))), event_log_prior_length: sha256Only.length }),
    ).toMatchObject({ trusted: true });
  });

  it('audits each change of trust with its code', async () => {
    const changes = (await server.server.datastore.listAudit(1000))
      .filter((r) => r.objectId === agentId && (r.action === 'node.trusted' || r.action === 'node.untrusted'))
      .reverse()
      .map((r) => r.detail.code ?? 'trusted');
    expect(changes).toEqual([
      'ERR_ATTEST_NONCE_REPLAYED',
      'trusted',
      'ERR_REATTEST_EVENTLOG_OFFSET',
      'ERR_ATTEST_QUOTE_SIGNATURE',
      'ERR_ATTEST_EVENTLOG_REPLAY',
      'trusted',
      'ERR_REATTEST_EVENTLOG_NOT_EXTENSION',
      'trusted',
    ]);
  });
});
