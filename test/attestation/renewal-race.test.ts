/**
 * A TPM agent's renewal takes a round trip (challenge, quote) between the server reading the node
 * and writing the renewal. Whatever happens to the node in that window (a re-quote makes it
 * untrusted, an operator evicts it) must stand: the renewal is refused, not written over it.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { challengeIn, TpmAttestor } from '../../src/agent/attestor/tpm.js';
import type { Challenge } from '../../src/agent/client.js';
import { AgentError } from '../../src/agent/errors.js';
import { AgentStore } from '../../src/agent/store.js';
import { type Swtpm, startSwtpm } from '../helpers/swtpm.js';
import { csr } from './evil-agent.js';
import {
  agentApiClient,
  agentIdentity,
  healthy,
  startAttestServer,
  startTestAgent,
  type TestAgent,
  type TestServer,
  until,
} from './harness.js';

let server: TestServer;
let swtpm: Swtpm;
let agent: TestAgent;
let agentId: string;

beforeAll(async () => {
  server = await startAttestServer({ tpm_attestation: { measured_boot: 'none', ek_trust: 'any' } });
  swtpm = await startSwtpm();
  agent = await startTestAgent(server, { tcti: swtpm.tcti });
  agentId = (await until('the agent to attest', () => healthy(agent))).spiffe_id;
  // The test renews by hand from here on, as the agent would, with its key, SVID and AK.
  await agent.stop();
});

afterAll(async () => {
  await agent?.stop();
  await server?.stop();
  await swtpm?.stop();
});

/**
 * One renewal as the agent makes it; `meanwhile` runs after the server read the node and sent its
 * challenge, before the agent answers. 'renewed', or the code the server refused with.
 */
async function renew(meanwhile: () => Promise<void>): Promise<string> {
  const client = agentApiClient(server, agentIdentity(agent.dataDir), 30_000);
  const tpm = new TpmAttestor({ tcti: swtpm.tcti, ek: 'auto', eventLogPath: 'none' });
  const ak = new AgentStore(agent.dataDir).loadAk();
  if (ak === undefined) throw new Error('the agent left no AK blobs');
  try {
    await client.renew({ csr: await csr(), tpm: await tpm.ekEvidence(ak) }, async (challenge: Challenge) => {
      await meanwhile();
      return tpm.answer(ak, challengeIn(challenge));
    });
    return 'renewed';
  } catch (error) {
    return error instanceof AgentError ? error.code : String(error);
  } finally {
    client.close();
  }
}

describe('TPM agent renewal racing a change of its node', () => {
  it('renews when nothing happened meanwhile', async () => {
    const before = await server.server.datastore.getNode(agentId);
    expect(await renew(async () => {})).toBe('renewed');
    const after = await server.server.datastore.getNode(agentId);
    expect(after?.newSerialNumber).toBeDefined();
    expect(after?.newSerialNumber).not.toBe(before?.newSerialNumber);
    expect(after?.serialNumber).toBe(before?.serialNumber);
  });

  it('a re-quote verdict of untrusted given during the renewal stands, and the renewal is refused', async () => {
    const before = await server.server.datastore.getNode(agentId);
    const verdict = {
      state: 'untrusted' as const,
      code: 'ERR_ATTEST_EVENTLOG_REPLAY',
      reason: 'PCR 7 does not match the event log',
      changedAt: Math.floor(Date.now() / 1000),
    };
    const outcome = await renew(async () => {
      await server.server.datastore.recordNodeTrust(agentId, { trust: verdict }, 'test.reattest');
    });
    expect(outcome).toBe('ERR_AGENT_UNTRUSTED');
    const after = await server.server.datastore.getNode(agentId);
    expect(after?.trust).toMatchObject({ state: 'untrusted', code: 'ERR_ATTEST_EVENTLOG_REPLAY' });
    // Nothing of the refused renewal was recorded.
    expect(after?.newSerialNumber).toBe(before?.newSerialNumber);
    expect(after?.expiresAt).toBe(before?.expiresAt);
    // Trusted again (a passing re-quote), the agent renews as before.
    await server.server.datastore.recordNodeTrust(
      agentId,
      { trust: { state: 'trusted', changedAt: Math.floor(Date.now() / 1000) } },
      'test.reattest',
    );
    expect(await renew(async () => {})).toBe('renewed');
  });

  it('an eviction during the renewal stands: the node is not brought back', async () => {
    const outcome = await renew(async () => {
      await server.server.datastore.deleteNode(agentId, 'test.operator');
    });
    expect(outcome).toBe('ERR_AGENT_NOT_ATTESTED');
    expect(await server.server.datastore.getNode(agentId)).toBeUndefined();
    // The operator sees why in the server's log.
    expect(
      server.logs.lines.find((l) => l.agent_id === agentId && l.reason === 'ERR_AGENT_NOT_ATTESTED'),
    ).toMatchObject({
      operation: 'renew',
      result: 'refused',
      detail: expect.stringMatching(/evicted while it renewed/),
    });
  });
});
