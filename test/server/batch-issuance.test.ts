import { type KeyObject, X509Certificate } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AgentApiClient } from '../../src/agent/client.js';
import { AgentError } from '../../src/agent/errors.js';
import { createCsr, createKeySigner, SpiffeId } from '../../src/spiffe/index.js';
import { newKeyPair } from '../../src/spiffe/new-key-pair.js';
import { startAttestServer, TD, type TestServer } from '../attestation/harness.js';
import { entry } from '../workload/harness.js';

// BatchNewX509SVID works on several CSRs of one call at once (their signature checks on libuv's
// pool, their signatures on the HSM's sessions): what it answers must be what a one-by-one pass
// answered, in the same order, with the same refusals.

/** More CSRs than the server works on at once for one call, so the order is really put back. */
const BATCH = 40;

/** What a call was refused with: the agent-side error. */
async function refusal(call: Promise<unknown>): Promise<AgentError> {
  try {
    await call;
  } catch (error) {
    if (error instanceof AgentError) return error;
    throw error;
  }
  throw new Error('the call was not refused');
}

describe('BatchNewX509SVID over the agent API', () => {
  let server: TestServer;
  let client: AgentApiClient;
  let other: AgentApiClient;
  /** The agent's entries by ID: SPIFFE ID and DNS names. */
  const mine = new Map<string, { spiffeId: string; dnsNames: string[] }>();
  let foreignEntryId: string;
  let bundlePem: string;

  /** An agent attested with a join token, as on first start, and a client holding its SVID. */
  async function attestedClient(): Promise<{ client: AgentApiClient; agentId: string }> {
    const token = await server.registration.createJoinToken({ ttl: 600, spiffe_id: '' }, 'test');
    const { privateKey } = newKeyPair('ec', { namedCurve: 'P-256' });
    const csr = Buffer.from(
      await createCsr({ spiffeId: SpiffeId.parse(`spiffe://${TD}/agent/csr`) }, createKeySigner(privateKey)),
    );
    const bootstrap = new AgentApiClient({ address: server.address, trustDomain: TD, bundlePem });
    try {
      const result = await bootstrap.attest(
        { method: 'join_token', csr, tpm: null, join_token: token.value },
        async () => {
          throw new Error('a join token needs no challenge');
        },
      );
      const identity = {
        keyPem: privateKey.export({ format: 'pem', type: 'pkcs8' }).toString(),
        chainPem: result.svid_chain.map((der) => new X509Certificate(der).toString()).join(''),
      };
      return {
        client: new AgentApiClient({
          address: server.address,
          trustDomain: TD,
          bundlePem,
          identity,
          deadlineMs: 30_000,
        }),
        agentId: result.spiffe_id,
      };
    } finally {
      bootstrap.close();
    }
  }

  /**
   * A fresh key and a CSR for `entryId`'s SPIFFE ID signed with it. Every third key is P-384, whose
   * check takes several times a P-256 one, so the checks of a call finish out of the request's order.
   */
  let made = 0;
  async function request(entryId: string): Promise<{ entry_id: string; csr: Buffer; key: KeyObject }> {
    const namedCurve = made++ % 3 === 1 ? 'P-384' : 'P-256';
    const { privateKey, publicKey } = newKeyPair('ec', { namedCurve });
    const spiffeId = SpiffeId.parse(mine.get(entryId)?.spiffeId ?? `spiffe://${TD}/foreign`);
    const csr = Buffer.from(await createCsr({ spiffeId }, createKeySigner(privateKey)));
    return { entry_id: entryId, csr, key: publicKey };
  }

  /** The same CSR with the last byte of its signature changed: well-formed DER, a signature that fails. */
  const tampered = (csr: Buffer): Buffer => {
    const copy = Buffer.from(csr);
    copy[copy.length - 1] = (copy[copy.length - 1] ?? 0) ^ 0x01;
    return copy;
  };

  beforeAll(async () => {
    server = await startAttestServer();
    bundlePem = server.server.ca
      .bundle()
      .x509Authorities.map((c) => c.toString())
      .join('');
    const agent = await attestedClient();
    client = agent.client;
    const stranger = await attestedClient();
    other = stranger.client;
    for (let i = 0; i < BATCH; i++) {
      const dnsNames = i % 3 === 0 ? [`w${i}.example.org`] : [];
      const created = await server.server.datastore.createEntry(
        { ...entry(`/batch/${i}`, agent.agentId, [`unix:uid:${5000 + i}`]), dnsNames },
        'test',
      );
      mine.set(created.id, { spiffeId: `spiffe://${TD}/batch/${i}`, dnsNames });
    }
    foreignEntryId = (
      await server.server.datastore.createEntry(
        entry('/foreign', stranger.agentId, ['unix:uid:4999']),
        'test',
      )
    ).id;
  }, 60_000);

  afterAll(async () => {
    client?.close();
    other?.close();
    await server?.stop();
  });

  it('issues one SVID per CSR, in the order asked, each for its entry, the CSR’s key and signed by the CA', async () => {
    // Out of the entries' creation order, and one entry twice (an agent re-asking while a call ran).
    const ids = [...mine.keys()].reverse();
    ids.splice(7, 0, ids[20] as string);
    const requests = await Promise.all(ids.map(request));
    const { svids } = await client.batchNewX509Svid(requests.map(({ entry_id, csr }) => ({ entry_id, csr })));
    expect(svids.map((s) => s.entry_id)).toEqual(ids);
    const root = new X509Certificate(bundlePem);
    const serials = new Set<string>();
    for (const [i, svid] of svids.entries()) {
      const leaf = new X509Certificate(svid.chain[0] as Buffer);
      const asked = mine.get(ids[i] as string);
      expect(leaf.subjectAltName?.split(', ')).toEqual([
        `URI:${asked?.spiffeId}`,
        ...(asked?.dnsNames ?? []).map((n) => `DNS:${n}`),
      ]);
      expect(leaf.publicKey.equals(requests[i]?.key as KeyObject)).toBe(true);
      expect(leaf.verify(root.publicKey)).toBe(true);
      expect(svid.expires_at).toBe(Math.floor(new Date(leaf.validTo).getTime() / 1000));
      serials.add(leaf.serialNumber);
    }
    expect(serials.size).toBe(ids.length);
  });

  it('refuses a batch with a CSR its key did not sign with ERR_ATTEST_CSR_INVALID naming the first such entry', async () => {
    const ids = [...mine.keys()];
    const requests = await Promise.all(ids.map(request));
    // Two bad ones; the first in the request's order is the one named, whichever is checked first.
    for (const k of [31, 5]) {
      const r = requests[k] as { csr: Buffer };
      r.csr = tampered(r.csr);
    }
    const error = await refusal(
      client.batchNewX509Svid(requests.map(({ entry_id, csr }) => ({ entry_id, csr }))),
    );
    expect(error.code).toBe('ERR_ATTEST_CSR_INVALID');
    expect(error.message).toContain(`the CSR for entry ${ids[5]} is not valid`);
    expect(error.message).toContain('signature does not verify');
  });

  it('names an invalid CSR before a later entry the agent may not have, and that entry before a later invalid CSR', async () => {
    const [a, b] = [...mine.keys()];
    const good = await request(a as string);
    const bad = await request(b as string);
    bad.csr = tampered(bad.csr);
    const foreign = await request(foreignEntryId);
    const strip = (r: { entry_id: string; csr: Buffer }) => ({ entry_id: r.entry_id, csr: r.csr });

    const csrFirst = await refusal(client.batchNewX509Svid([good, bad, foreign].map(strip)));
    expect(csrFirst.code).toBe('ERR_ATTEST_CSR_INVALID');
    expect(csrFirst.message).toContain(`the CSR for entry ${b} is not valid`);

    const entryFirst = await refusal(client.batchNewX509Svid([good, foreign, bad].map(strip)));
    expect(entryFirst.code).toBe('ERR_AGENT_ENTRY_NOT_AUTHORIZED');
    expect(entryFirst.message).toContain(JSON.stringify(foreignEntryId));

    // The entry is the other agent's, and that agent gets its SVID.
    const { svids } = await other.batchNewX509Svid([strip(foreign)]);
    expect(svids.map((s) => s.entry_id)).toEqual([foreignEntryId]);
  });
});
