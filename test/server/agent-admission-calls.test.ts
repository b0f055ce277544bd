import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { AgentApiClient, Identity } from '../../src/agent/client.js';
import { AgentError } from '../../src/agent/errors.js';
import { openMemoryKeyManager } from '../../src/hsm/index.js';
import { CertificateAuthority } from '../../src/server/ca/authority.js';
import { openSqliteDatastore } from '../../src/server/datastore/index.js';
import { SpiffeId } from '../../src/spiffe/index.js';
import { keyAndCsr } from '../attestation/evil-agent.js';
import { startAttestServer, TD, type TestServer } from '../attestation/harness.js';
import { agentClient, identityOf, joinTokenAgent } from '../helpers/agent-api.js';

// The agent API keeps each agent certificate's verdict while the CA's bundle object is the same
// (src/server/agentapi/admission.ts). These calls go to a real server over mTLS, each through one
// kept connection as the agent's own, and show every reason to refuse still refuses on the very
// next call after it arises.

let server: TestServer;

beforeAll(async () => {
  server = await startAttestServer({ agent_svid_ttl: '1h' });
});

afterAll(async () => {
  await server?.stop();
});

function clientAs(identity?: Identity): AgentApiClient {
  return agentClient(server, identity);
}

/** A join-token agent attested now, with its client kept open for its calls. */
async function attested(): Promise<{ agentId: string; identity: Identity; client: AgentApiClient }> {
  const { agentId, identity } = await joinTokenAgent(server);
  return { agentId, identity, client: clientAs(identity) };
}

/** A sync round's two calls: 'accepted', or the code (and message) the server refused with. */
async function sync(client: AgentApiClient): Promise<string> {
  try {
    await client.fetchEntries(undefined);
    await client.fetchBundles();
    return 'accepted';
  } catch (error) {
    if (error instanceof AgentError) return `${error.code}: ${error.message}`;
    throw error;
  }
}

describe('agent API calls after the verdict on an agent certificate was kept', () => {
  it('refuses an agent SVID on the very next call once the clock is outside its validity, and again accepts it inside', async () => {
    const { client } = await attested();
    let moved = 0;
    const move = (seconds: number) => {
      server.clock.advance(seconds);
      moved += seconds;
    };
    try {
      expect(await sync(client)).toBe('accepted');
      expect(await sync(client)).toBe('accepted');
      move(3600 + 1);
      expect(await sync(client)).toMatch(/^ERR_AGENT_UNAUTHENTICATED: .*leaf certificate expired at/);
      // A clock set back before the SVID's notBefore is outside its window too.
      move(-(3600 + 1) - 120);
      expect(await sync(client)).toMatch(/^ERR_AGENT_UNAUTHENTICATED: .*leaf certificate is not valid until/);
      move(120);
      expect(await sync(client)).toBe('accepted');
    } finally {
      server.clock.advance(-moved);
      client.close();
    }
  });

  it('refuses a banned node on the very next call, accepts it once unbanned, and refuses it once evicted', async () => {
    const { agentId, client } = await attested();
    try {
      expect(await sync(client)).toBe('accepted');
      await server.registration.banAgent({ spiffe_id: agentId, ek_hash: '' }, 'test');
      expect(await sync(client)).toMatch(/^ERR_ATTEST_BANNED: /);
      await server.registration.unbanAgent({ spiffe_id: agentId }, 'test');
      expect(await sync(client)).toBe('accepted');
      await server.registration.evictAgent({ spiffe_id: agentId }, 'test');
      expect(await sync(client)).toMatch(/^ERR_AGENT_NOT_ATTESTED: /);
    } finally {
      client.close();
    }
  });

  it('refuses, every time, an SVID for the same agent signed by another CA', async () => {
    const { agentId, client } = await attested();
    const dir = join(mkdtempSync(join(tmpdir(), 'ironroot-other-ca-')), 'data');
    const clock = { now: () => server.clock.now() };
    const otherStore = (await openSqliteDatastore(dir, clock)).datastore;
    const other = await CertificateAuthority.open({
      trustDomain: TD,
      keyManager: openMemoryKeyManager(),
      datastore: otherStore,
      clock,
      logger: pino({ level: 'silent' }),
      caTtl: 24 * 3600,
      keyType: 'ec-p256',
      refreshHint: 300,
    });
    const { key } = await keyAndCsr();
    const forged = await other.mintX509Svid({ spiffeId: SpiffeId.parse(agentId), publicKey: key, ttl: 3600 });
    const impostor = clientAs(identityOf(key, forged.chainDer));
    try {
      expect(await sync(client)).toBe('accepted');
      for (let call = 0; call < 2; call++)
        expect(await sync(impostor)).toMatch(/^ERR_AGENT_UNAUTHENTICATED: /);
      expect(await sync(client)).toBe('accepted');
    } finally {
      impostor.close();
      client.close();
      await otherStore.close();
    }
  });

  it('answers FetchBundles with the bundle document of the CA as it is at each call, across CA changes', async () => {
    const { client } = await attested();
    const ca = server.server.ca;
    // A fresh marshal of a bundle built from the journal now, not the object the server kept.
    // Marshalled now, from the bundle the CA holds now.
    const current = () => ca.bundle().marshal();
    const served = async () => (await client.fetchBundles()).bundle;
    try {
      const documents = [await served()];
      expect(documents[0]).toBe(current());
      expect(await served()).toBe(documents[0]);
      await ca.prepare('x509', 'test');
      documents.push(await served());
      expect(documents[1]).toBe(current());
      await ca.activate('x509', 'test');
      documents.push(await served());
      expect(documents[2]).toBe(current());
      // Prepare added a key; activation changed none of the published ones, only which signs.
      expect(documents[1]).not.toBe(documents[0]);
      expect(JSON.parse(documents[1] ?? '').keys).toHaveLength(
        JSON.parse(documents[0] ?? '').keys.length + 1,
      );
    } finally {
      client.close();
    }
  });

  // Last: the server's CA ends up rotated.
  it('judges again after each CA change: accepted while its CA is in the bundle (tainted too), refused on the very next call once it is revoked', async () => {
    const { client } = await attested();
    const ca = server.server.ca;
    try {
      expect(await sync(client)).toBe('accepted');
      // The CA that signed this agent's SVID.
      const replaced = ca.slots.find((s) => s.authority === 'x509' && s.state === 'active');
      if (replaced === undefined) throw new Error('no active X.509 CA');
      await ca.prepare('x509', 'test');
      expect(await sync(client)).toBe('accepted');
      await ca.activate('x509', 'test');
      expect(await sync(client)).toBe('accepted');
      expect(ca.slots.find((s) => s.keyId === replaced.keyId)?.state).toBe('old');
      // Tainting marks the key for holders to rotate away from; it stays in the bundle until revoked.
      await ca.taint('x509', replaced.keyId, 'test');
      expect(await sync(client)).toBe('accepted');
      await ca.revoke('x509', replaced.keyId, 'test');
      // The new CA has the same subject name: its key is what fails the SVID's signature.
      expect(await sync(client)).toMatch(
        /^ERR_AGENT_UNAUTHENTICATED: .*signature on the leaf certificate does not verify/,
      );
      expect(await sync(client)).toMatch(/^ERR_AGENT_UNAUTHENTICATED: /);
      // An agent attested under the new CA is served.
      const renewed = await attested();
      try {
        expect(await sync(renewed.client)).toBe('accepted');
      } finally {
        renewed.client.close();
      }
    } finally {
      client.close();
    }
  });
});
