import { execFile } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { connect, type PeerCertificate } from 'node:tls';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AdminClient } from '../../src/server/admin/client.js';
import type { X509SVIDResponseMessage } from '../../src/workload-api/proto.js';
import { runServerCli } from '../helpers/cli.js';
import { RawClient } from '../helpers/raw-client.js';
import { entry, workloadSocketPath, workloadWhere } from '../workload/harness.js';
import {
  healthy,
  startAttestServer,
  startTestAgent,
  TD,
  type TestAgent,
  type TestServer,
  until,
} from './harness.js';

const run = promisify(execFile);
/** This test process is the workload: its uid is its selector. */
const me = `unix:uid:${process.getuid?.() ?? 0}`;

/** The certificates the agent API presents, in the order it sends them (leaf first). */
function presented(address: string, alpn = 'h2'): Promise<X509Certificate[]> {
  const [host, port] = address.split(':');
  return new Promise((resolve, reject) => {
    const socket = connect(
      { host, port: Number(port), servername: TD, ALPNProtocols: [alpn], rejectUnauthorized: false },
      () => {
        const chain: X509Certificate[] = [];
        let cert: PeerCertificate | undefined = socket.getPeerCertificate(true);
        const seen = new Set<string>();
        while (cert?.raw !== undefined && !seen.has(cert.fingerprint256)) {
          seen.add(cert.fingerprint256);
          chain.push(new X509Certificate(cert.raw));
          cert = (cert as PeerCertificate & { issuerCertificate?: PeerCertificate }).issuerCertificate;
        }
        socket.end();
        resolve(chain);
      },
    );
    socket.on('error', reject);
  });
}

/** Whether the agent API's certificate verifies (OpenSSL, as agents do) with only `roots` trusted. */
function verifiesWith(address: string, roots: readonly X509Certificate[], alpn = 'h2'): Promise<boolean> {
  const [host, port] = address.split(':');
  return new Promise((resolve, reject) => {
    const socket = connect(
      {
        host,
        port: Number(port),
        servername: TD,
        ALPNProtocols: [alpn],
        ca: roots.map((c) => c.toString()),
        rejectUnauthorized: false,
        // The SVID names no host; agents check its SPIFFE ID instead.
        checkServerIdentity: () => undefined,
      },
      () => {
        resolve(socket.authorized);
        socket.end();
      },
    );
    socket.on('error', reject);
  });
}

const certOf = (der: Uint8Array | undefined) => new X509Certificate(der ?? new Uint8Array());
const activeCa = (server: TestServer) =>
  certOf(server.server.ca.slots.find((s) => s.authority === 'x509' && s.state === 'active')?.certificateDer);
const agentSvid = (agent: TestAgent) =>
  new X509Certificate(readFileSync(join(agent.dataDir, 'agent-svid.pem')));
const leafOf = (message: X509SVIDResponseMessage | undefined) =>
  new X509Certificate(message?.svids[0]?.x509_svid ?? Buffer.alloc(0));

describe('the server certificate follows the CA at once: activate, taint, revoke', () => {
  let server: TestServer;
  let agent: TestAgent;
  let client: RawClient;
  const bundleEndpoint = () => `127.0.0.1:${server.server.ports.bundleEndpoint}`;

  beforeAll(async () => {
    server = await startAttestServer({
      bundle_endpoint: { address: '127.0.0.1:0', profile: 'https_spiffe' },
    });
    const token = await server.registration.createJoinToken({ ttl: 600, spiffe_id: '' }, 'test');
    agent = await startTestAgent(server, {
      attestation: 'join_token',
      join_token: token.value,
      socket_path: workloadSocketPath(),
      sync_interval: '200ms',
    });
    client = new RawClient(agent.config.socket_path ?? '');
  });

  afterAll(async () => {
    client?.close();
    await agent?.stop();
    await server?.stop();
  });

  it('presents an SVID of the remaining active CA right after each change (agent API and https_spiffe bundle endpoint), and agents and workloads keep their identity', async () => {
    const agentId = (await until('the agent to attest', () => healthy(agent))).spiffe_id;
    // Lifetimes of an hour: nothing here may wait for a half-life.
    await server.server.datastore.createEntry(entry('/svc', agentId, [me], { x509SvidTtl: 3600 }), 'test');
    await workloadWhere(agent, 'the /svc SVID', (w) => w.svids === 1);
    const stream = client.stream<X509SVIDResponseMessage>('FetchX509SVID');
    try {
      await stream.waitFor(1);
      const ca = server.server.ca;
      const previous = activeCa(server);
      const previousId = ca.slots.find((s) => s.authority === 'x509' && s.state === 'active')?.keyId ?? '';
      expect((await presented(server.address))[0]?.verify(previous.publicKey)).toBe(true);

      const seen = stream.messages.length;
      await ca.prepare('x509', 'test');
      const next = certOf((await ca.activate('x509', 'test')).certificateDer);
      const afterActivate = await presented(server.address);
      expect(afterActivate[0]?.verify(next.publicKey)).toBe(true);
      expect((await presented(bundleEndpoint(), 'http/1.1'))[0]?.verify(next.publicKey)).toBe(true);
      expect(await verifiesWith(server.address, [next])).toBe(true);
      // Peers that know only the previous CA verify it through the cross-signed CA certificate.
      expect(
        afterActivate.some((c) => c.publicKey.equals(next.publicKey) && c.verify(previous.publicKey)),
      ).toBe(true);
      expect(await verifiesWith(server.address, [previous])).toBe(true);

      // The agent renews its own SVID under the new CA, and the workload's SVID follows.
      await until('the agent SVID to be signed by the new CA', () => agentSvid(agent).verify(next.publicKey));
      await until('a workload SVID signed by the new CA', () =>
        stream.messages.slice(seen).find((m) => leafOf(m).verify(next.publicKey)),
      );

      await ca.taint('x509', previousId, 'test');
      expect((await presented(server.address))[0]?.verify(next.publicKey)).toBe(true);
      expect(await verifiesWith(server.address, [next])).toBe(true);

      await ca.revoke('x509', previousId, 'test');
      const afterRevoke = await presented(server.address);
      expect(afterRevoke[0]?.verify(next.publicKey)).toBe(true);
      expect(await verifiesWith(bundleEndpoint(), [next], 'http/1.1')).toBe(true);
      // The previous key is destroyed: nothing presented is signed by it any more.
      expect(afterRevoke.some((c) => c.verify(previous.publicKey))).toBe(false);
      expect(await verifiesWith(server.address, [next])).toBe(true);
      expect(await verifiesWith(server.address, [previous])).toBe(false);

      // The agent keeps syncing with the server, and the workload keeps an identity from the new CA.
      const syncs = agent.agent.status().workload?.syncs ?? 0;
      await until('three more syncs after the revocation', () =>
        (agent.agent.status().workload?.syncs ?? 0) >= syncs + 3 ? true : undefined,
      );
      expect(agent.agent.status()).toMatchObject({ state: 'healthy', last_error: null });
      expect(stream.messages.at(-1)?.svids.map((s) => s.spiffe_id)).toEqual([`spiffe://${TD}/svc`]);
      expect(leafOf(stream.messages.at(-1)).verify(next.publicKey)).toBe(true);
      const bundle = readFileSync(join(agent.dataDir, 'bundle.pem'), 'utf8');
      expect(bundle.match(/BEGIN CERTIFICATE/g)).toHaveLength(1);
      expect(new X509Certificate(bundle).raw.equals(next.raw)).toBe(true);
    } finally {
      stream.cancel();
    }
  });
});

describe('an agent stopped before a CA was prepared', () => {
  let server: TestServer;
  let agent: TestAgent;
  let client: RawClient;

  beforeAll(async () => {
    server = await startAttestServer();
    const token = await server.registration.createJoinToken({ ttl: 600, spiffe_id: '' }, 'test');
    agent = await startTestAgent(server, {
      attestation: 'join_token',
      join_token: token.value,
      socket_path: workloadSocketPath(),
      sync_interval: '200ms',
    });
    client = new RawClient(agent.config.socket_path ?? '');
  });

  afterAll(async () => {
    client?.close();
    await agent?.stop();
    await server?.stop();
  });

  it('reaches the server again after prepare, activate and a server restart, and serves identity from the new CA', async () => {
    const agentId = (await until('the agent to attest', () => healthy(agent))).spiffe_id;
    await server.server.datastore.createEntry(entry('/late', agentId, [me], { x509SvidTtl: 3600 }), 'test');
    await workloadWhere(agent, 'the /late SVID', (w) => w.svids === 1);
    await agent.stop();
    const previous = activeCa(server);
    // The agent's stored bundle knows only the CA of its attestation.
    expect(readFileSync(join(agent.dataDir, 'bundle.pem'), 'utf8')).toBe(previous.toString());

    await server.server.ca.prepare('x509', 'test');
    const next = certOf((await server.server.ca.activate('x509', 'test')).certificateDer);
    await server.restart();
    const chain = await presented(server.address);
    expect(chain[0]?.verify(next.publicKey)).toBe(true);
    // openssl, as an independent oracle, verifies the presented chain with the previous CA alone.
    const dir = join(agent.dataDir, '..');
    writeFileSync(join(dir, 'previous.pem'), previous.toString());
    writeFileSync(join(dir, 'leaf.pem'), chain[0]?.toString() ?? '');
    writeFileSync(join(dir, 'cross.pem'), chain.slice(1).join(''));
    const { stdout } = await run('openssl', [
      'verify',
      '-CAfile',
      join(dir, 'previous.pem'),
      '-untrusted',
      join(dir, 'cross.pem'),
      join(dir, 'leaf.pem'),
    ]);
    expect(stdout.trim()).toBe(`${join(dir, 'leaf.pem')}: OK`);

    await agent.start();
    await workloadWhere(agent, 'the restarted agent to sync and serve', (w) => w.syncs > 0 && w.svids === 1);
    // A fresh channel: the first one gave up on the socket while the agent was stopped.
    client.close();
    client = new RawClient(agent.config.socket_path ?? '');
    // The SVID restored from the cache file is the old CA's until a round re-issues it: once the
    // agent has the new bundle, which may take more than the first round on a loaded machine.
    const served = await until('an SVID from the new CA', async () => {
      const stream = client.stream<X509SVIDResponseMessage>('FetchX509SVID');
      const [first] = await stream.waitFor(1);
      stream.cancel();
      return first !== undefined && leafOf(first).verify(next.publicKey) ? first : undefined;
    });
    expect(served.svids.map((s) => s.spiffe_id)).toEqual([`spiffe://${TD}/late`]);
    // It learnt the new CA from the bundle, and renewed its own SVID under it.
    await until('the agent bundle to hold the new CA', () =>
      readFileSync(join(agent.dataDir, 'bundle.pem'), 'utf8').includes(next.toString()),
    );
    await until('the agent SVID to be signed by the new CA', () => agentSvid(agent).verify(next.publicKey));
  });
});

describe('localauthority x509 activate, show, taint and revoke say when revoking is safe', () => {
  let server: TestServer;
  let running: TestAgent;
  let stopped: TestAgent;
  let stoppedRuns = false;
  let admin: AdminClient;
  const cli = async (...args: string[]) =>
    runServerCli(['localauthority', 'x509', ...args, '--admin-socket', server.adminSocket], process.env);
  const ok = async (...args: string[]) => {
    const result = await cli(...args);
    expect(result.stderr).toBe('');
    expect(result.code).toBe(0);
    return result.stdout;
  };
  const readiness = async () =>
    (await admin.call('LocalAuthorityService', 'ListAuthorities', { kind: 'x509' })).readiness;
  const joinTokenAgent = async () => {
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
  /** Prepares and activates a new CA; resolves to its key id and what activate printed. */
  const rotate = async () => {
    await ok('prepare');
    const printed = await ok('activate');
    const id = /Authority ID : (\S+)/.exec(printed)?.[1] ?? '';
    return { id, printed };
  };

  beforeAll(async () => {
    server = await startAttestServer();
    admin = new AdminClient(server.adminSocket);
    running = await joinTokenAgent();
    stopped = await joinTokenAgent();
    stoppedRuns = true;
  });

  afterAll(async () => {
    admin?.close();
    await running?.stop();
    if (stoppedRuns) await stopped.stop();
    await server?.stop();
  });

  it('counts the agents under the active CA, refuses a revocation that cuts one off, and allows it once all renewed', async () => {
    const previous = server.server.ca.slots.find(
      (s) => s.authority === 'x509' && s.state === 'active',
    )?.keyId;
    const stoppedId = stopped.agent.status().spiffe_id;
    const runningId = running.agent.status().spiffe_id;
    await stopped.stop();
    stoppedRuns = false;

    const { id: active, printed } = await rotate();
    expect(printed).toContain(`renewed under the active CA ${active}\n`);
    // The running agent may already have renewed; the stopped one cannot have.
    expect(/^Not yet {6}: (.*)$/m.exec(printed)?.[1]?.split(', ')).toContain(stoppedId);
    expect(printed).toContain('Revocation   : not yet safe;');

    await until('the running agent to renew under the new CA', async () =>
      (await readiness())?.current === 1 ? true : undefined,
    );
    const shown = await ok('show');
    expect(shown).toContain(`Agents       : 1 of 2 renewed under the active CA ${active}\n`);
    expect(shown).toContain(`Not yet      : ${stoppedId}\n`);
    expect(shown).not.toContain(runningId);

    const tainted = await ok('taint', '--authority-id', previous ?? '');
    expect(tainted).toContain(`Not yet      : ${stoppedId}\n`);

    const refused = await cli('revoke', '--authority-id', previous ?? '');
    expect(refused.code).toBe(1);
    expect(refused.stderr).toContain(
      `revoking ${previous} would cut off 1 of 2 agent(s) that have not renewed under the active CA ${active}: ${stoppedId}.`,
    );
    await expect(
      admin.call('LocalAuthorityService', 'Revoke', { kind: 'x509', authority_id: previous ?? '' }),
    ).rejects.toMatchObject({ errorCode: 'ERR_CA_REVOKE_STRANDS_AGENTS' });
    expect(server.server.ca.slots.some((s) => s.keyId === previous)).toBe(true);

    // The stopped agent comes back, reaches the server through the cross-signed CA and renews.
    await stopped.start();
    stoppedRuns = true;
    await until('every agent to renew under the new CA', async () =>
      (await readiness())?.current === 2 ? true : undefined,
    );
    const revoked = await ok('revoke', '--authority-id', previous ?? '');
    expect(revoked).toContain(`Agents       : 2 of 2 renewed under the active CA ${active}\n`);
    expect(revoked).toContain('Revocation   : no agent was cut off');
    expect(server.server.ca.slots.some((s) => s.keyId === previous)).toBe(false);
  });

  it('revokes with --force and names the agents it cut off', async () => {
    const previous = server.server.ca.slots.find(
      (s) => s.authority === 'x509' && s.state === 'active',
    )?.keyId;
    const stoppedId = stopped.agent.status().spiffe_id;
    await stopped.stop();
    stoppedRuns = false;
    const { id: active } = await rotate();
    await until('the running agent to renew under the new CA', async () =>
      (await readiness())?.current === 1 ? true : undefined,
    );
    await ok('taint', '--authority-id', previous ?? '');
    const forced = await ok('revoke', '--authority-id', previous ?? '', '--force');
    expect(forced).toContain(`Agents       : 1 of 2 renewed under the active CA ${active}\n`);
    expect(forced).toContain(`Cut off      : ${stoppedId}\n`);
    expect(forced).toContain('Revocation   : the agents above cannot verify the server any more;');
    expect(server.server.ca.slots.some((s) => s.keyId === previous)).toBe(false);
  });
});
