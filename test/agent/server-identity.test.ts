import type { KeyObject, X509Certificate } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Metadata, Server, ServerCredentials, type ServerDuplexStream, status } from '@grpc/grpc-js';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Agent } from '../../src/agent/agent.js';
import { loadAgentConfig } from '../../src/agent/config/load.js';
import { agentService } from '../../src/agent-api/proto.js';
import { createKeySigner, mintX509Ca, mintX509Svid, SpiffeId, TrustDomain } from '../../src/spiffe/index.js';
import { newKeyPair } from '../../src/spiffe/new-key-pair.js';
import { LogSink, until } from '../attestation/harness.js';

const TD = TrustDomain.parse('example.org');
const SERVER_ID = 'spiffe://example.org/ironroot/server';
const REACHED = 'ERR_TEST_SERVER_REACHED';

interface Key {
  privateKey: KeyObject;
  publicKey: KeyObject;
}
const ecKey = (): Key => newKeyPair('ec', { namedCurve: 'P-256' });

/**
 * A TLS gRPC server presenting `leaf`, whose AttestAgent refuses every agent with REACHED: an agent
 * that reports REACHED got past its check of the server's certificate.
 */
async function serveAgentApi(
  leaf: X509Certificate,
  key: KeyObject,
): Promise<{ address: string; server: Server }> {
  const server = new Server();
  server.addService(agentService().service, {
    AttestAgent: (call: ServerDuplexStream<unknown, unknown>) => {
      call.once('data', () => {
        const metadata = new Metadata();
        metadata.set('ironroot-error-code', REACHED);
        call.emit('error', { code: status.PERMISSION_DENIED, details: `${REACHED}: test server`, metadata });
      });
    },
  });
  const credentials = ServerCredentials.createSsl(null, [
    {
      private_key: Buffer.from(key.export({ type: 'pkcs8', format: 'pem' }).toString()),
      cert_chain: Buffer.from(leaf.toString()),
    },
  ]);
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync('127.0.0.1:0', credentials, (error, bound) => (error ? reject(error) : resolve(bound))),
  );
  return { address: `127.0.0.1:${port}`, server };
}

/** A join-token agent (no TPM needed: the refusal comes before any attestation data) for `address`. */
async function agentFor(address: string, bundleFile: string): Promise<{ agent: Agent; logs: LogSink }> {
  const dataDir = join(mkdtempSync(join(tmpdir(), 'ironroot-agent-')), 'data');
  const logs = new LogSink();
  const config = loadAgentConfig({
    overrides: {
      server_address: address,
      trust_domain: TD.name,
      trust_bundle: bundleFile,
      data_dir: dataDir,
      socket_path: join(dataDir, '..', 'agent.sock'),
      attestation: 'join_token',
      join_token: 'unused',
      retry_initial: '50ms',
      retry_max: '200ms',
    },
  });
  const agent = new Agent(config, pino({ level: 'debug' }, logs.stream));
  await agent.start();
  return { agent, logs };
}

describe("the agent accepts only the server's own SVID as the agent API server", () => {
  const dir = mkdtempSync(join(tmpdir(), 'ironroot-server-id-'));
  const bundleFile = join(dir, 'bundle.pem');
  let caKey: Key;
  let ca: X509Certificate;
  const running: Server[] = [];
  const agents: Agent[] = [];

  /** An X.509-SVID signed by the agent's bundle CA, as the real CA would sign it. */
  const svid = (id: string) => {
    const key = ecKey();
    const now = Date.now();
    return mintX509Svid(
      {
        spiffeId: SpiffeId.parse(id),
        publicKey: key.publicKey,
        notBefore: new Date(now - 60_000),
        notAfter: new Date(now + 3_600_000),
      },
      { certificate: ca, signer: createKeySigner(caKey.privateKey) },
    ).then((leaf) => ({ leaf, key: key.privateKey }));
  };

  /** The agent's first error talking to a server presenting `leaf`. */
  const firstError = async (leaf: X509Certificate, key: KeyObject) => {
    const { address, server } = await serveAgentApi(leaf, key);
    running.push(server);
    const { agent, logs } = await agentFor(address, bundleFile);
    agents.push(agent);
    const error = await until(
      'the agent to fail talking to the server',
      () => agent.status().last_error ?? undefined,
    );
    return { error, logs };
  };

  beforeAll(async () => {
    caKey = ecKey();
    const now = Date.now();
    ca = await mintX509Ca(
      {
        trustDomain: TD,
        publicKey: caKey.publicKey,
        notBefore: new Date(now - 60_000),
        notAfter: new Date(now + 86_400_000),
      },
      createKeySigner(caKey.privateKey),
    );
    writeFileSync(bundleFile, ca.toString());
  });
  afterAll(async () => {
    for (const agent of agents) await agent.stop();
    for (const server of running) server.forceShutdown();
  });

  it.each([
    ['a workload SVID of the trust domain', 'spiffe://example.org/workload'],
    ['an agent SVID', 'spiffe://example.org/agent/tpm/0123'],
    ['an ID below the server ID', `${SERVER_ID}/x`],
  ])('refuses a server presenting %s, naming the expected and presented IDs', async (_name, id) => {
    const { leaf, key } = await svid(id);
    const { error, logs } = await firstError(leaf, key);
    expect(error).toEqual({
      code: 'ERR_AGENT_SERVER_ID_MISMATCH',
      message: `the server presented the SVID ${id}, not ${SERVER_ID}: only the server's own ID may serve the agent API; refusing to talk to it (check server_address)`,
    });
    expect(logs.lines.some((l) => l.reason === 'ERR_AGENT_SERVER_ID_MISMATCH')).toBe(true);
  });

  it(`talks to a server presenting exactly ${SERVER_ID} (the refusals above are the ID check's)`, async () => {
    const { leaf, key } = await svid(SERVER_ID);
    const { error } = await firstError(leaf, key);
    expect(error.code).toBe(REACHED);
  });
});
