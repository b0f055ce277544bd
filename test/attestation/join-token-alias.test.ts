import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cli } from '../helpers/server.js';
import { healthy, startAttestServer, startTestAgent, TD, type TestServer, until } from './harness.js';

let server: TestServer;

beforeAll(async () => {
  server = await startAttestServer();
});

afterAll(async () => {
  await server?.stop();
});

const admin = () => ['--admin-socket', server.adminSocket];

async function generate(...args: string[]): Promise<string> {
  const result = await cli(['token', 'generate', ...admin(), '--output', 'json', ...args]);
  expect(result.stderr).toBe('');
  expect(result.code).toBe(0);
  return (JSON.parse(result.stdout) as { value: string }).value;
}

async function attest(token: string): Promise<string> {
  const agent = await startTestAgent(server, { attestation: 'join_token', join_token: token });
  try {
    return (await until('the join-token agent to attest', () => healthy(agent))).spiffe_id;
  } finally {
    await agent.stop();
  }
}

interface ShownEntry {
  spiffe_id: string;
  parent_id: string;
  selectors: { type: string; value: string }[];
}

async function entriesFor(spiffeId: string): Promise<ShownEntry[]> {
  const result = await cli(['entry', 'show', ...admin(), '--spiffe-id', spiffeId, '--output', 'json']);
  expect(result.code).toBe(0);
  return (JSON.parse(result.stdout) as { entries: ShownEntry[] }).entries;
}

async function aliasesOf(agentId: string): Promise<string[]> {
  const node = await server.server.datastore.getNode(agentId);
  if (node === undefined) throw new Error(`${agentId} is not attested`);
  return (await server.registration.nodeAliases(node)).map((e) => e.spiffeId);
}

describe('join token with --spiffe-id', () => {
  it('gives the attested agent that ID as a node alias, matched by its own agent ID only', async () => {
    const aliasId = `spiffe://${TD}/node/web-1`;
    const agentId = await attest(await generate('--spiffe-id', aliasId));

    expect(await entriesFor(aliasId)).toEqual([
      expect.objectContaining({
        spiffe_id: aliasId,
        parent_id: `spiffe://${TD}/ironroot/server`,
        selectors: [{ type: 'spiffe_id', value: agentId }],
      }),
    ]);
    expect(await aliasesOf(agentId)).toEqual([aliasId]);

    const shown = await cli(['agent', 'show', ...admin(), '--spiffe-id', agentId, '--output', 'json']);
    expect((JSON.parse(shown.stdout) as { alias_spiffe_ids: string[] }).alias_spiffe_ids).toEqual([aliasId]);

    // Another agent, attested with a plain token, does not get the alias.
    const other = await attest(await generate());
    expect(await aliasesOf(other)).toEqual([]);
  });

  it('creates no entry for a token without --spiffe-id', async () => {
    const count = async () => {
      const result = await cli(['entry', 'count', ...admin(), '--output', 'json']);
      return (JSON.parse(result.stdout) as { count: number }).count;
    };
    const before = await count();
    const agentId = await attest(await generate());
    expect(await count()).toBe(before);
    expect(await aliasesOf(agentId)).toEqual([]);
  });

  it.each([
    [
      'an ID outside the trust domain',
      'spiffe://other.org/node/web-1',
      'ERR_SPIFFE_ID_OUTSIDE_TRUST_DOMAIN',
      `spiffe_id "spiffe://other.org/node/web-1" is outside this server's trust domain; use an ID of the form spiffe://${TD}/…`,
    ],
    [
      'an agent ID',
      `spiffe://${TD}/agent/join_token/0123456789ab`,
      'ERR_SPIFFE_ID_RESERVED',
      `spiffe_id "spiffe://${TD}/agent/join_token/0123456789ab" is reserved for agents named by attestation; choose a path outside /agent and /ironroot, e.g. spiffe://<trust domain>/node/web-1`,
    ],
    [
      "the server's ID",
      `spiffe://${TD}/ironroot/server`,
      'ERR_SPIFFE_ID_RESERVED',
      `spiffe_id "spiffe://${TD}/ironroot/server" is reserved for the server itself; choose a path outside /agent and /ironroot, e.g. spiffe://<trust domain>/node/web-1`,
    ],
    [
      'the trust domain ID',
      `spiffe://${TD}`,
      'ERR_SPIFFE_ID_INVALID',
      `spiffe_id "spiffe://${TD}" is not a valid SPIFFE ID: it needs a path, e.g. spiffe://example.org/workload`,
    ],
  ])('refuses %s at generate time with its message', async (_name, id, code, message) => {
    const result = await cli(['token', 'generate', ...admin(), '--spiffe-id', id]);
    expect(result.code).toBe(1);
    expect(result.stdout).toBe('');
    expect(result.stderr).toBe(`Error (${code}): ${message}\n`);
    // The code travels with the refusal; the registration service throws the same named error.
    await expect(
      server.registration.createJoinToken({ ttl: 0, spiffe_id: id }, 'test'),
    ).rejects.toMatchObject({ code, message });
  });
});
