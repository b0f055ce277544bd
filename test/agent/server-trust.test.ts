import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Agent } from '../../src/agent/agent.js';
import { loadAgentConfig } from '../../src/agent/config/load.js';
import type { AgentConfigInput } from '../../src/agent/config/schema.js';
import type { HealthStatus } from '../../src/agent/health.js';
import { preflight } from '../../src/agent/preflight.js';
import { LogSink, startAttestServer, TD, type TestServer, until } from '../attestation/harness.js';
import { freePort } from '../helpers/server.js';

const CANNOT_AUTHENTICATE =
  'the server cannot be authenticated (a configuration to fix, see reason); serving the cached SVIDs and retrying with backoff';

interface RunningAgent {
  agent: Agent;
  logs: LogSink;
  dataDir: string;
}

/**
 * Failed calls to wait for before judging the log: enough for a line per attempt to show, and
 * for both loops of an attested agent (its SVID's and the sync) to have met the failure.
 */
const ATTEMPTS = 5;

describe('the agent names why it cannot trust the server, instead of retrying it as an outage', () => {
  /** The server the agents talk to. */
  let server: TestServer;
  /** Another server of the same trust domain, with a CA of its own: its bundle is not `server`'s. */
  let other: TestServer;
  const agents: Agent[] = [];

  const start = async (overrides: Partial<AgentConfigInput>, dataDir?: string): Promise<RunningAgent> => {
    const dir = dataDir ?? join(mkdtempSync(join(tmpdir(), 'ironroot-agent-')), 'data');
    const logs = new LogSink();
    const config = loadAgentConfig({
      overrides: {
        server_address: server.address,
        trust_domain: TD,
        data_dir: dir,
        socket_path: join(dir, '..', 'agent.sock'),
        attestation: 'join_token',
        join_token: 'unused',
        retry_initial: '50ms',
        retry_max: '200ms',
        sync_interval: '100ms',
        ...overrides,
      },
    });
    const agent = new Agent(config, pino({ level: 'debug' }, logs.stream));
    agents.push(agent);
    await agent.start();
    return { agent, logs, dataDir: dir };
  };

  /** The status once `attempts` calls failed. */
  const afterFailures = (running: RunningAgent, attempts = ATTEMPTS): Promise<HealthStatus> =>
    until(`${attempts} failed calls`, () => {
      const status = running.agent.status();
      return status.consecutive_failures >= attempts ? status : undefined;
    });

  /** Warn lines and above, by reason. */
  const warnings = (running: RunningAgent) =>
    running.logs.lines.filter((l) => Number(l.level) >= 40).map((l) => ({ msg: l.msg, reason: l.reason }));

  beforeAll(async () => {
    server = await startAttestServer();
    other = await startAttestServer();
  });
  afterAll(async () => {
    for (const agent of agents) await agent.stop();
    await server?.stop();
    await other?.stop();
  });

  it("(a) trust_bundle holding another server's CA: ERR_AGENT_TRUST_BUNDLE_STALE naming the file and the fix, logged once", async () => {
    const running = await start({ trust_bundle: other.bundleFile });
    const status = await afterFailures(running);
    expect(status.last_error?.code).toBe('ERR_AGENT_TRUST_BUNDLE_STALE');
    const message = status.last_error?.message ?? '';
    expect(message).toContain(`trust_bundle ${other.bundleFile}`);
    expect(message).toContain(`spiffe://${TD}/ironroot/server`);
    expect(message).toContain('ironroot-server bundle show --format pem');
    expect(message).toContain('trust_bundle_url');
    expect(warnings(running)).toEqual([{ msg: CANNOT_AUTHENTICATE, reason: 'ERR_AGENT_TRUST_BUNDLE_STALE' }]);
  });

  it('(b) another trust_domain with the server bundle: ERR_AGENT_TRUST_DOMAIN_MISMATCH naming trust_domain and both domains', async () => {
    const running = await start({ trust_domain: 'other.org', trust_bundle: server.bundleFile });
    const status = await afterFailures(running);
    expect(status.last_error).toEqual({
      code: 'ERR_AGENT_TRUST_DOMAIN_MISMATCH',
      message: `the server presents an SVID of trust domain ${TD} (spiffe://${TD}/ironroot/server), but this agent's trust_domain is other.org: agent and server must be in one trust domain; set trust_domain: ${TD} (with that trust domain's bundle), or point server_address at the server of other.org`,
    });
    expect(warnings(running)).toEqual([
      { msg: CANNOT_AUTHENTICATE, reason: 'ERR_AGENT_TRUST_DOMAIN_MISMATCH' },
    ]);
  });

  it('(b) another trust_domain with a bundle that does not verify the server either: still the trust domain, named first', async () => {
    const running = await start({ trust_domain: 'other.org', trust_bundle: other.bundleFile });
    const status = await afterFailures(running);
    expect(status.last_error?.code).toBe('ERR_AGENT_TRUST_DOMAIN_MISMATCH');
    expect(status.last_error?.message).toContain("this agent's trust_domain is other.org");
  });

  it("(c) a server whose CA is not in the agent's own bundle (data_dir): ERR_AGENT_TRUST_BUNDLE_STALE naming data_dir's bundle.pem, logged once", async () => {
    // Attested by the other server, the agent keeps that server's bundle in data_dir; then the
    // server at its address is one with another CA (a new server, or a CA rotation it missed).
    const token = await other.registration.createJoinToken({ ttl: 600, spiffe_id: '' }, 'test');
    const first = await start({
      server_address: other.address,
      trust_bundle: other.bundleFile,
      join_token: token.value,
    });
    await until('the agent to attest', () => (first.agent.status().state === 'healthy' ? true : undefined));
    await first.agent.stop();
    const running = await start({ trust_bundle: other.bundleFile }, first.dataDir);
    const status = await afterFailures(running);
    expect(status.last_error?.code).toBe('ERR_AGENT_TRUST_BUNDLE_STALE');
    expect(status.last_error?.message).toContain(
      `the bundle kept in data_dir (${join(first.dataDir, 'bundle.pem')})`,
    );
    expect(status.last_error?.message).toContain(
      `write the server's current bundle to ${join(first.dataDir, 'bundle.pem')}`,
    );
    expect(status.state).toBe('degraded');
    expect(warnings(running)).toEqual([{ msg: CANNOT_AUTHENTICATE, reason: 'ERR_AGENT_TRUST_BUNDLE_STALE' }]);
  });

  it('a port where nothing listens is still ERR_AGENT_SERVER_UNAVAILABLE, logged once as unreachable', async () => {
    const running = await start({
      server_address: `127.0.0.1:${await freePort()}`,
      trust_bundle: server.bundleFile,
    });
    const status = await afterFailures(running);
    expect(status.last_error?.code).toBe('ERR_AGENT_SERVER_UNAVAILABLE');
    expect(warnings(running)).toEqual([
      {
        msg: 'the server is unreachable; serving the cached SVIDs and retrying with backoff',
        reason: 'ERR_AGENT_SERVER_UNAVAILABLE',
      },
    ]);
  });

  it('reads a trust_bundle in trust_bundle_format spiffe (a SPIFFE bundle document) and attests with it', async () => {
    const file = join(mkdtempSync(join(tmpdir(), 'ironroot-spiffe-bundle-')), 'bundle.json');
    writeFileSync(file, server.server.ca.bundle().marshal());
    const token = await server.registration.createJoinToken({ ttl: 600, spiffe_id: '' }, 'test');
    const running = await start({
      trust_bundle: file,
      trust_bundle_format: 'spiffe',
      join_token: token.value,
    });
    await until('the agent to attest', () => (running.agent.status().state === 'healthy' ? true : undefined));
  });

  it('refuses at start a trust_bundle that is not in its trust_bundle_format, naming both keys', async () => {
    const config = loadAgentConfig({
      overrides: {
        server_address: server.address,
        trust_domain: TD,
        trust_bundle: server.bundleFile,
        trust_bundle_format: 'spiffe',
        data_dir: join(mkdtempSync(join(tmpdir(), 'ironroot-agent-')), 'data'),
      },
    });
    await expect(preflight(config)).rejects.toMatchObject({
      code: 'ERR_AGENT_CONFIG_FILE',
      message: expect.stringMatching(
        new RegExp(
          `^trust_bundle ${server.bundleFile} is not a SPIFFE bundle \\(.*\\); write the server's bundle there \\(ironroot-server bundle show --format spiffe\\), or set trust_bundle_format to its format$`,
        ),
      ),
    });
  });

  it('the same agent config with the right bundle attests (the refusals above are the bundle and trust domain checks)', async () => {
    const token = await server.registration.createJoinToken({ ttl: 600, spiffe_id: '' }, 'test');
    const running = await start({ trust_bundle: server.bundleFile, join_token: token.value });
    const status = await until('the agent to attest', () => {
      const s = running.agent.status();
      return s.state === 'healthy' ? s : undefined;
    });
    expect(status.last_error).toBeNull();
  });
});
