/**
 * Agent API clients for tests that call a real server as agents do: trusting the roots the server's
 * CA publishes at the moment the client is made, and agents attested by join token.
 */
import { type KeyObject, X509Certificate } from 'node:crypto';
import { AgentApiClient, type Identity } from '../../src/agent/client.js';
import { keyAndCsr } from '../attestation/evil-agent.js';
import { TD, type TestServer } from '../attestation/harness.js';

/** The identity an agent's calls present: its key and the SVID chain it was given. */
export function identityOf(key: KeyObject, chain: readonly Uint8Array[]): Identity {
  return {
    keyPem: key.export({ format: 'pem', type: 'pkcs8' }).toString(),
    chainPem: chain.map((der) => new X509Certificate(der).toString()).join(''),
  };
}

/** A client of `server` (at `address`, its own by default): anonymous, or as `identity`. */
export function agentClient(
  server: TestServer,
  identity?: Identity,
  address = server.address,
): AgentApiClient {
  return new AgentApiClient({
    address,
    trustDomain: TD,
    // The roots the server's CA publishes now: a client made after a rotation trusts the new CA.
    bundlePem: server.server.ca
      .bundle()
      .toX509Bundle()
      .authorities.map((c) => c.toString())
      .join(''),
    deadlineMs: 10_000,
    ...(identity ? { identity } : {}),
  });
}

/** A join-token agent attested now through a connection of its own: its ID and its identity. */
export async function joinTokenAgent(
  server: TestServer,
  address = server.address,
): Promise<{ agentId: string; identity: Identity }> {
  const token = await server.registration.createJoinToken({ ttl: 0, spiffe_id: '' }, 'test');
  const { key, csr } = await keyAndCsr();
  const bootstrap = agentClient(server, undefined, address);
  try {
    const result = await bootstrap.attest(
      { method: 'join_token', csr, tpm: null, join_token: token.value },
      () => Promise.reject(new Error('a join token needs no challenge')),
    );
    return { agentId: result.spiffe_id, identity: identityOf(key, result.svid_chain) };
  } finally {
    bootstrap.close();
  }
}
