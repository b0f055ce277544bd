import { existsSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { healthSocketPath, queryHealth } from '../../src/agent/health.js';
import {
  healthy,
  startAttestServer,
  startTestAgent,
  type TestServer,
  until,
} from '../attestation/harness.js';
import { type Swtpm, startSwtpm } from '../helpers/swtpm.js';

let swtpm: Swtpm;
let server: TestServer;

beforeAll(async () => {
  swtpm = await startSwtpm();
  // Short agent SVIDs, so renewal (at half-life) happens within the test.
  server = await startAttestServer({
    tpm_attestation: { measured_boot: 'none', ek_trust: 'any' },
    agent_svid_ttl: '6s',
  });
});

afterAll(async () => {
  await server?.stop();
  await swtpm?.stop();
});

function attestDecisions(id: string): number {
  return server.logs
    .decisions()
    .filter((d) => d.agent_id === id && d.operation === 'attest' && d.result === 'ok').length;
}

describe('agent lifecycle', () => {
  it('logs that any EK is accepted, at start', () => {
    expect(server.logs.text()).toContain('tpm_attestation.ek_trust is \\"any\\"');
  });

  it('renews with a fresh quote after the server restarted, without attesting again', async () => {
    const agent = await startTestAgent(server, { tcti: swtpm.tcti });
    try {
      const first = await until('the agent to attest', () => healthy(agent));
      const before = await server.server.datastore.getNode(first.spiffe_id);
      await server.restart();
      const renewed = await until('a renewal', () => {
        const s = agent.agent.status();
        return s.renewals >= 1 && s.state === 'healthy' ? s : undefined;
      });
      expect(renewed.spiffe_id).toBe(first.spiffe_id);
      // The renewed SVID becomes the node's current one as soon as the agent uses it.
      const after = await until('the renewed SVID to become current', async () => {
        const node = await server.server.datastore.getNode(first.spiffe_id);
        return node?.serialNumber !== before?.serialNumber ? node : undefined;
      });
      expect(after?.attestationCount).toBe(1);
      expect(server.logs.decisions().some((d) => d.operation === 'renew' && d.result === 'ok')).toBe(true);
    } finally {
      await agent.stop();
    }
  });

  it('resumes with its persisted SVID after a restart, without attesting', async () => {
    const agent = await startTestAgent(server, { tcti: swtpm.tcti });
    try {
      const first = await until('the agent to attest', () => healthy(agent));
      const attested = attestDecisions(first.spiffe_id);
      const count = (await server.server.datastore.getNode(first.spiffe_id))?.attestationCount;
      await agent.restart();
      const resumed = agent.agent.status();
      expect(resumed.state).toBe('healthy');
      expect(resumed.spiffe_id).toBe(first.spiffe_id);
      expect(resumed.attestations).toBe(0);
      expect(attestDecisions(first.spiffe_id)).toBe(attested);
      expect((await server.server.datastore.getNode(first.spiffe_id))?.attestationCount).toBe(count);
    } finally {
      await agent.stop();
    }
  });

  it('finishes a renewal that a crash interrupted on disk, SVID and cache, and resumes with them without attesting', async () => {
    const agent = await startTestAgent(server, { tcti: swtpm.tcti });
    try {
      const first = await until('the agent to attest', () => healthy(agent));
      const svidPath = join(agent.dataDir, 'agent-svid.pem');
      const cachePath = join(agent.dataDir, 'svid-cache.bin');
      const attestedCert = readFileSync(svidPath, 'utf8');
      const attestedCache = readFileSync(cachePath);
      await until('a renewal', () => (agent.agent.status().renewals >= 1 ? true : undefined));
      await agent.stop();
      // What a crash right after the save's first rename leaves: the renewed key in place, the SVID
      // and the cache (sealed under the attested key) it replaced beside it, and the renewed SVID
      // and the cache sealed under the renewed key still under their temporary names.
      renameSync(svidPath, `${svidPath}.tmp`);
      writeFileSync(svidPath, attestedCert, { mode: 0o600 });
      renameSync(cachePath, `${cachePath}.tmp`);
      writeFileSync(cachePath, attestedCache, { mode: 0o600 });
      await agent.start();
      // Served from the persisted cache before the server is asked for anything.
      expect(agent.logs.text()).toContain('serving the persisted SVID cache until the server is reached');
      expect(agent.logs.text()).toContain(
        'finished saving the SVID cache the last run was stopped in the middle of',
      );
      expect(agent.logs.text()).not.toContain('the persisted SVID cache is of another agent key: discarded');
      const resumed = await until('the agent to be healthy again', () => healthy(agent));
      expect(resumed.spiffe_id).toBe(first.spiffe_id);
      expect(agent.agent.status().attestations).toBe(0);
      expect(agent.logs.text()).toContain(
        'finished saving the agent SVID the last run was stopped in the middle of',
      );
      expect(existsSync(`${svidPath}.tmp`)).toBe(false);
      expect(existsSync(`${cachePath}.tmp`)).toBe(false);
      expect(readFileSync(svidPath, 'utf8')).not.toBe(attestedCert);
    } finally {
      await agent.stop();
    }
  });

  it('reports degraded health while the server is down, and recovers when it returns', async () => {
    const agent = await startTestAgent(server, { tcti: swtpm.tcti });
    try {
      await until('the agent to attest', () => healthy(agent));
      await server.down();
      const degraded = await until('degraded health', () => {
        const s = agent.agent.status();
        return s.state === 'degraded' ? s : undefined;
      });
      expect(degraded.last_error?.code).toBe('ERR_AGENT_SERVER_UNAVAILABLE');
      // Whether /ready still passes depends on how far the SVID's life has run (see the health rule).
      const ready = await queryHealth(healthSocketPath(agent.dataDir), 'ready');
      expect(JSON.parse(ready.body)).toMatchObject({ state: 'degraded' });
      await server.up();
      await until('recovery', () => (agent.agent.status().state === 'healthy' ? true : undefined));
      expect(agent.agent.status().last_error).toBeNull();
    } finally {
      await agent.stop();
    }
  });

  it('attests again after eviction, and is refused renewal while banned', async () => {
    const agent = await startTestAgent(server, { tcti: swtpm.tcti });
    try {
      const first = await until('the agent to attest', () => healthy(agent));
      await server.registration.evictAgent({ spiffe_id: first.spiffe_id }, 'test');
      await until('re-attestation after eviction', () =>
        agent.agent.status().attestations >= 2 ? true : undefined,
      );
      expect(agent.agent.status().attestations).toBeGreaterThanOrEqual(2);
      const node = await until('the new node record', () => server.server.datastore.getNode(first.spiffe_id));
      expect(node.attestationCount).toBe(1);

      await server.registration.banAgent({ spiffe_id: first.spiffe_id, ek_hash: '' }, 'test');
      const refused = await until('the banned renewal', () => {
        const s = agent.agent.status();
        return s.last_error?.code === 'ERR_ATTEST_BANNED' ? s : undefined;
      });
      expect(refused.state).toBe('degraded');
      // The sync may meet the ban first; the renewal, held back by the shared backoff, follows.
      await until('the banned renewal decision', () =>
        server.logs.decisions().some((d) => d.operation === 'renew' && d.reason === 'ERR_ATTEST_BANNED')
          ? true
          : undefined,
      );
      await server.registration.unbanAgent({ spiffe_id: first.spiffe_id }, 'test');
    } finally {
      await agent.stop();
    }
  });

  it('is refused renewal once its EK no longer passes the policy', async () => {
    const agent = await startTestAgent(server, { tcti: swtpm.tcti });
    try {
      const first = await until('the agent to attest', () => healthy(agent));
      const attested = (await server.server.datastore.getNode(first.spiffe_id))?.attestationCount;
      await server.restart({ tpm_attestation: { measured_boot: 'none', ek_hashes: ['0'.repeat(64)] } });
      const refused = await until('the refused renewal', () => {
        const s = agent.agent.status();
        return s.last_error?.code === 'ERR_ATTEST_EK_NOT_ALLOWED' ? s : undefined;
      });
      expect(refused.state).toBe('degraded');
      expect((await server.server.datastore.getNode(first.spiffe_id))?.attestationCount).toBe(attested);
    } finally {
      await agent.stop();
      await server.restart();
    }
  });
});
