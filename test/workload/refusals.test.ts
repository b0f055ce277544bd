import { createPrivateKey, X509Certificate } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AgentError } from '../../src/agent/errors.js';
import { createCsr, createKeySigner, SpiffeId } from '../../src/spiffe/index.js';
import { newKeyPair } from '../../src/spiffe/new-key-pair.js';
import {
  agentApiClient,
  agentIdentity,
  healthy,
  startAttestServer,
  startTestAgent,
  TD,
  type TestAgent,
  type TestServer,
  until,
} from '../attestation/harness.js';
import { TestCa } from '../helpers/workload-api.js';
import { entry, workloadSocketPath, workloadWhere } from './harness.js';

/** What a call was refused with: the agent-side error code. */
async function refusal(call: Promise<unknown>): Promise<string> {
  try {
    await call;
  } catch (error) {
    if (error instanceof AgentError) return error.code;
    throw error;
  }
  throw new Error('the call was not refused');
}

describe('agent API refusals for entry sync and SVIDs', () => {
  let server: TestServer;
  let agentA: TestAgent;
  let agentB: TestAgent;
  let bEntryId: string;

  beforeAll(async () => {
    server = await startAttestServer();
    const start = async () => {
      const token = await server.registration.createJoinToken({ ttl: 600, spiffe_id: '' }, 'test');
      const agent = await startTestAgent(server, {
        attestation: 'join_token',
        join_token: token.value,
        socket_path: workloadSocketPath(),
        sync_interval: '200ms',
      });
      await until('the agent to attest', () => healthy(agent));
      return agent;
    };
    agentA = await start();
    agentB = await start();
    const bId = agentB.agent.status().spiffe_id;
    bEntryId = (await server.server.datastore.createEntry(entry('/only-b', bId, ['unix:uid:4242']), 'test'))
      .id;
    await workloadWhere(agentB, 'agent B to cache its entry', (w) => w.entries === 1 && w.svids === 1);
  });

  afterAll(async () => {
    await agentA?.stop();
    await agentB?.stop();
    await server?.stop();
  });

  it('refuses an X.509-SVID or JWT-SVID for another agent’s entry with ERR_AGENT_ENTRY_NOT_AUTHORIZED', async () => {
    const client = agentApiClient(server, agentIdentity(agentA.dataDir));
    try {
      const { privateKey } = newKeyPair('ec', { namedCurve: 'P-256' });
      const csr = Buffer.from(
        await createCsr({ spiffeId: SpiffeId.parse(`spiffe://${TD}/only-b`) }, createKeySigner(privateKey)),
      );
      expect(await refusal(client.batchNewX509Svid([{ entry_id: bEntryId, csr }]))).toBe(
        'ERR_AGENT_ENTRY_NOT_AUTHORIZED',
      );
      expect(await refusal(client.newJwtSvid(bEntryId, ['aud']))).toBe('ERR_AGENT_ENTRY_NOT_AUTHORIZED');
      // Agent A's sync never included the entry; agent B's own request for it succeeds.
      expect((await client.fetchEntries(undefined)).entries.map((e) => e.id)).not.toContain(bEntryId);
    } finally {
      client.close();
    }
    const own = agentApiClient(server, agentIdentity(agentB.dataDir));
    try {
      expect((await own.newJwtSvid(bEntryId, ['aud'])).token.split('.')).toHaveLength(3);
    } finally {
      own.close();
    }
  });

  it('refuses a JWT-SVID with more than 64 audiences with ERR_AGENT_BAD_REQUEST naming ERR_JWTSVID_TOO_MANY_AUDIENCES', async () => {
    const own = agentApiClient(server, agentIdentity(agentB.dataDir));
    try {
      const audience = Array.from({ length: 65 }, (_, i) => `aud-${i}`);
      const error = await own.newJwtSvid(bEntryId, audience).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(error).toBeInstanceOf(AgentError);
      expect({ code: (error as AgentError).code, message: (error as AgentError).message }).toEqual({
        code: 'ERR_AGENT_BAD_REQUEST',
        message: expect.stringContaining('ERR_JWTSVID_TOO_MANY_AUDIENCES: JWT-SVID has 65 audiences'),
      });
      expect((await own.newJwtSvid(bEntryId, audience.slice(0, 64))).token.split('.')).toHaveLength(3);
    } finally {
      own.close();
    }
  });

  it('refuses a caller without a client certificate with ERR_AGENT_UNAUTHENTICATED', async () => {
    const client = agentApiClient(server);
    try {
      expect(await refusal(client.fetchEntries(undefined))).toBe('ERR_AGENT_UNAUTHENTICATED');
      expect(await refusal(client.fetchBundles())).toBe('ERR_AGENT_UNAUTHENTICATED');
      expect(await refusal(client.newJwtSvid(bEntryId, ['aud']))).toBe('ERR_AGENT_UNAUTHENTICATED');
    } finally {
      client.close();
    }
  });

  it('refuses a workload SVID of the same trust domain as client certificate: it names no agent', async () => {
    const { privateKey, publicKey } = newKeyPair('ec', { namedCurve: 'P-256' });
    const minted = await server.server.ca.mintX509Svid({
      spiffeId: SpiffeId.parse(`spiffe://${TD}/only-b`),
      publicKey,
      ttl: 300,
    });
    const client = agentApiClient(server, {
      keyPem: privateKey.export({ format: 'pem', type: 'pkcs8' }).toString(),
      chainPem: minted.chain.map((c) => c.toString()).join(''),
    });
    try {
      expect(await refusal(client.fetchEntries(undefined))).toBe('ERR_AGENT_UNAUTHENTICATED');
    } finally {
      client.close();
    }
  });

  it('refuses a client certificate from a foreign CA naming an attested agent with ERR_AGENT_UNAUTHENTICATED', async () => {
    const foreign = await TestCa.create(TD);
    const svid = await foreign.svid(SpiffeId.parse(agentA.agent.status().spiffe_id));
    const client = agentApiClient(server, {
      keyPem: createPrivateKey({ key: Buffer.from(svid.keyPkcs8Der), format: 'der', type: 'pkcs8' })
        .export({ format: 'pem', type: 'pkcs8' })
        .toString(),
      chainPem: svid.chainDer.map((der) => new X509Certificate(der).toString()).join(''),
    });
    try {
      // Same trust domain, same agent ID, another CA: only the verification against the bundle tells.
      expect(await refusal(client.fetchEntries(undefined))).toBe('ERR_AGENT_UNAUTHENTICATED');
      expect(
        server.logs.lines.some(
          (l) =>
            l.method === 'FetchEntries' && l.result === 'refused' && l.reason === 'ERR_AGENT_UNAUTHENTICATED',
        ),
      ).toBe(true);
    } finally {
      client.close();
    }
  });
});
