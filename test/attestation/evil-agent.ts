import type { KeyObject } from 'node:crypto';
import { type ChallengeIn, TpmAttestor } from '../../src/agent/attestor/tpm.js';
import { AgentApiClient, type Challenge, type Result } from '../../src/agent/client.js';
import { AgentError } from '../../src/agent/errors.js';
import type { StoredAk } from '../../src/agent/store.js';
import type { ChallengeResponseMessage, TpmEvidenceMessage } from '../../src/agent-api/proto.js';
import { createCsr, createKeySigner, SpiffeId } from '../../src/spiffe/index.js';
import { newKeyPair } from '../../src/spiffe/new-key-pair.js';
import type { EkKind } from '../../src/tpm/index.js';
import { TD, type TestServer } from './harness.js';

/**
 * A test-only agent that drives the real AttestAgent stream with the real TPM library, and lets a
 * test tamper with exactly one thing. The server it talks to is the real one.
 */
export interface Tamper {
  evidence?(evidence: TpmEvidenceMessage, ak: StoredAk): Promise<TpmEvidenceMessage> | TpmEvidenceMessage;
  /** Runs between receiving the challenge and answering it. */
  beforeAnswer?(challenge: ChallengeIn): Promise<void> | void;
  /** Answers instead of the real TPM (which could not, e.g. for an AK it does not hold). */
  replaceAnswer?(challenge: ChallengeIn): Promise<ChallengeResponseMessage>;
  answer?(
    answer: ChallengeResponseMessage,
    challenge: ChallengeIn,
    ak: StoredAk,
  ): Promise<ChallengeResponseMessage> | ChallengeResponseMessage;
}

export interface EvilOutcome {
  result?: Result;
  error?: AgentError;
  /** The last answer sent, for replays. */
  answer?: ChallengeResponseMessage;
  evidence?: TpmEvidenceMessage;
  ak?: StoredAk;
  /** The agent key the CSR was made for: with `result`'s chain, the agent SVID for mTLS. */
  key?: KeyObject;
}

export function challengeIn(challenge: Challenge): ChallengeIn {
  return {
    credentialBlob: new Uint8Array(challenge.credential_blob),
    encryptedSecret: new Uint8Array(challenge.encrypted_secret),
    nonce: new Uint8Array(challenge.nonce),
    selection: challenge.pcr_selection.map((s) => ({ hash: s.hash_alg, pcrs: s.pcrs })),
  };
}

export async function csr(): Promise<Buffer> {
  return (await keyAndCsr()).csr;
}

export async function keyAndCsr(): Promise<{ key: KeyObject; csr: Buffer }> {
  const { privateKey } = newKeyPair('ec', { namedCurve: 'P-256' });
  const der = await createCsr(
    { spiffeId: SpiffeId.parse(`spiffe://${TD}/agent/csr`) },
    createKeySigner(privateKey),
  );
  return { key: privateKey, csr: Buffer.from(der) };
}

/** An in-process test server, or any server's agent API address and trust bundle (PEM). */
export type AttestTarget = TestServer | { address: string; bundlePem: string };

export async function evilAttest(
  server: AttestTarget,
  tcti: string,
  tamper: Tamper = {},
  options: { ek?: EkKind; reuse?: { evidence: TpmEvidenceMessage; ak: StoredAk } } = {},
): Promise<EvilOutcome> {
  const attestor = new TpmAttestor({ tcti, ek: options.ek ?? 'rsa2048', eventLogPath: 'none' });
  const fresh = options.reuse ?? (await attestor.evidence());
  const evidence = tamper.evidence ? await tamper.evidence(fresh.evidence, fresh.ak) : fresh.evidence;
  const client = new AgentApiClient({
    address: server.address,
    trustDomain: TD,
    bundlePem:
      'bundlePem' in server
        ? server.bundlePem
        : server.server.ca
            .bundle()
            .toX509Bundle()
            .authorities.map((c) => c.toString())
            .join(''),
  });
  const request = await keyAndCsr();
  const outcome: EvilOutcome = { evidence, ak: fresh.ak, key: request.key };
  try {
    outcome.result = await client.attest(
      { method: 'tpm', csr: request.csr, tpm: evidence, join_token: '' },
      async (message) => {
        const challenge = challengeIn(message);
        await tamper.beforeAnswer?.(challenge);
        if (tamper.replaceAnswer) {
          outcome.answer = await tamper.replaceAnswer(challenge);
          return outcome.answer;
        }
        const honest = await attestor.answer(fresh.ak, challenge);
        outcome.answer = tamper.answer ? await tamper.answer(honest, challenge, fresh.ak) : honest;
        return outcome.answer;
      },
    );
  } catch (error) {
    if (!(error instanceof AgentError)) throw error;
    outcome.error = error;
  } finally {
    client.close();
  }
  return outcome;
}
