import { X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Swtpm, startSwtpm } from '../helpers/swtpm.js';
import {
  healthy,
  startAttestServer,
  startTestAgent,
  type TestAgent,
  type TestServer,
  until,
} from './harness.js';

/**
 * The re-quote stream runs on the agent's kept connection. When the agent SVID renews, that
 * connection is retired and the stream moves to the new one: the server sees it opened again with
 * the new SVID, and re-quotes go on passing.
 */
describe('the re-quote stream across an agent SVID renewal', () => {
  let swtpm: Swtpm;
  let server: TestServer;
  let agent: TestAgent;
  let agentId: string;

  beforeAll(async () => {
    swtpm = await startSwtpm();
    // Renewal at about half of 20 s; re-quotes every 2 s (the least allowed), so some run on either side of it.
    server = await startAttestServer({
      tpm_attestation: { measured_boot: 'none', ek_trust: 'any', reattest_interval: '2s' },
      agent_svid_ttl: '20s',
    });
    agent = await startTestAgent(server, { tcti: swtpm.tcti, sync_interval: '200ms' });
    agentId = (await until('the agent to attest', () => healthy(agent))).spiffe_id;
  }, 60_000);

  afterAll(async () => {
    await agent?.stop();
    await server?.stop();
    await swtpm?.stop();
  });

  function agentSerial(): string {
    return new X509Certificate(readFileSync(join(agent.dataDir, 'agent-svid.pem'))).serialNumber;
  }

  /** The serials the server saw the re-quote streams of this agent opened with, in order. */
  function streamSerials(): unknown[] {
    return server.logs.lines
      .filter((l) => l.msg === 're-quote stream opened' && l.agent_id === agentId)
      .map((l) => l.agent_serial);
  }

  it('reopens the stream with the renewed SVID, and re-quotes keep passing on it', async () => {
    const attested = agentSerial();
    await until('the stream opened with the attested SVID', () =>
      streamSerials().includes(attested) ? true : undefined,
    );
    await until('a passing re-quote', () =>
      (agent.agent.status().reattest?.passed ?? 0) >= 1 ? true : undefined,
    );
    await until(
      'the agent SVID to renew',
      () => (agent.agent.status().renewals >= 1 ? true : undefined),
      30_000,
    );
    const renewed = agentSerial();
    expect(renewed).not.toBe(attested);
    await until('the stream opened with the renewed SVID', () =>
      streamSerials().includes(renewed) ? true : undefined,
    );
    const passed = agent.agent.status().reattest?.passed ?? 0;
    await until('two more passing re-quotes', () =>
      (agent.agent.status().reattest?.passed ?? 0) >= passed + 2 ? true : undefined,
    );
    expect(agent.agent.status().reattest).toMatchObject({ trusted: true, failed: 0 });
    expect((await server.server.datastore.getNode(agentId))?.trust.state).toBe('trusted');
    // The last stream the server saw opened is the renewed SVID's; nothing was refused on the way.
    expect(streamSerials().at(-1)).toBe(renewed);
    expect(server.logs.lines.filter((l) => l.result === 'refused')).toEqual([]);
  }, 60_000);
});
