import { rmSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import type { Server } from 'node:tls';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { UnixAttestor } from '../../src/agent/workloadattestor/unix.js';
import { matchId, SpiffeId } from '../../src/spiffe/index.js';
import type { WorkloadApiError } from '../../src/workload-api/errors.js';
import { WorkloadApiServer } from '../../src/workload-api/server.js';
import { createMtlsServer } from '../../src/workload-api/tls.js';
import { X509Source } from '../../src/workload-api/x509-source.js';
import {
  openTempDir,
  requireFreshDist,
  runNodeAs,
  systemUser,
  TestCa,
  TestProvider,
} from '../helpers/workload-api.js';

const fixture = fileURLToPath(new URL('./fixtures/mtls-client.mjs', import.meta.url));

describe('mutual TLS between two Node processes with SVIDs from the Workload API', () => {
  let dir: string;
  let api: WorkloadApiServer;
  let source: X509Source;
  let tls: Server;
  let port: number;
  let alice: { uid: number; gid: number };
  let bob: { uid: number; gid: number };
  const serverId = SpiffeId.parse('spiffe://example.org/server');
  const aliceId = SpiffeId.parse('spiffe://example.org/alice');
  const bobId = SpiffeId.parse('spiffe://example.org/bob');
  const accepted: Array<{ peer: string; received: string }> = [];
  const refused: WorkloadApiError[] = [];

  const connectAs = async (user: { uid: number; gid: number }, expectedServer: SpiffeId) => {
    const result = await runNodeAs(user, [fixture, api.socketPath, String(port), expectedServer.toString()]);
    if (result.code !== 0) throw new Error(`client exited ${result.code}: ${result.stderr}`);
    return JSON.parse(result.stdout) as { peer?: string; reply?: string; error?: string };
  };

  beforeAll(async () => {
    requireFreshDist();
    alice = await systemUser('ironroot-wapi-a');
    bob = await systemUser('ironroot-wapi-b');
    const provider = new TestProvider(await TestCa.create('example.org'), new UnixAttestor());
    await provider.setEntries([
      { spiffeId: serverId, selectors: [`unix:uid:${process.getuid?.() ?? -1}`] },
      { spiffeId: aliceId, selectors: [`unix:uid:${alice.uid}`] },
      { spiffeId: bobId, selectors: [`unix:uid:${bob.uid}`] },
    ]);
    dir = openTempDir('wapi-mtls-');
    api = await WorkloadApiServer.listen({ provider, socketPath: join(dir, 'agent.sock') });
    source = await X509Source.create({ address: `unix://${api.socketPath}` });
    tls = createMtlsServer(
      source,
      matchId(aliceId),
      (socket, peer) => {
        const record = { peer: peer.toString(), received: '' };
        accepted.push(record);
        socket.on('data', (d: Buffer) => {
          record.received += d.toString();
        });
        socket.on('end', () => socket.end(`hello ${peer}`));
        socket.on('error', () => {});
      },
      (error) => refused.push(error),
    );
    await new Promise<void>((resolve) => tls.listen(0, '127.0.0.1', resolve));
    port = (tls.address() as AddressInfo).port;
  });

  afterAll(async () => {
    await new Promise((resolve) => tls.close(resolve));
    source.close();
    await api.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('connects an authorized client to the expected server, both identities verified', async () => {
    const answer = await connectAs(alice, serverId);
    expect(answer).toEqual({ peer: serverId.toString(), reply: `hello ${aliceId}` });
    expect(accepted.at(-1)).toEqual({ peer: aliceId.toString(), received: 'ping' });
  });

  it('refuses a client whose SPIFFE ID the server does not authorize, before any data', async () => {
    const before = accepted.length;
    const answer = await connectAs(bob, serverId);
    expect(answer.reply ?? '').toBe('');
    expect(accepted.length).toBe(before);
    await expect.poll(() => refused.length).toBeGreaterThan(0);
    expect(refused.at(-1)?.code).toBe('ERR_WORKLOADAPI_PEER_REJECTED');
    expect(refused.at(-1)?.message).toContain(bobId.toString());
  });

  it('refuses a server whose SPIFFE ID the client does not expect, sending it nothing', async () => {
    const before = accepted.length;
    const answer = await connectAs(alice, SpiffeId.parse('spiffe://example.org/someone-else'));
    expect(answer).toEqual({ error: 'ERR_WORKLOADAPI_PEER_REJECTED' });
    // Whether or not the server finished its side of the handshake, it received no byte.
    expect(accepted.slice(before).map((r) => r.received)).not.toContain('ping');
  });
});
