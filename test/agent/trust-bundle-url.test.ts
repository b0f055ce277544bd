import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { loadAgentConfig } from '../../src/agent/config/load.js';
import type { HealthStatus } from '../../src/agent/health.js';
import { until } from '../attestation/harness.js';
import { builtBin } from '../helpers/dist.js';
import { cli, freePort, startTestServer, type TestServer } from '../helpers/server.js';
import { opensslCert } from '../helpers/x509.js';

const run = promisify(execFile);
const AGENT = builtBin('ironroot-agent');
const TD = 'example.org';

/** A CA certificate made by openssl, with `extensions` (-addext values). */
async function opensslCa(dir: string, name: string, subject: string, extensions: string[]): Promise<string> {
  const cert = join(dir, `${name}.pem`);
  await opensslCert({
    cert,
    key: join(dir, `${name}.key`),
    subject,
    extensions: ['basicConstraints=critical,CA:TRUE', 'keyUsage=critical,keyCertSign,cRLSign', ...extensions],
  });
  return cert;
}

/** A web-PKI serving certificate for 127.0.0.1 and localhost, issued by the test CA `ca`. */
async function servingCert(dir: string, ca: string): Promise<{ cert: string; key: string }> {
  const served = { cert: join(dir, 'web.pem'), key: join(dir, 'web.key') };
  await opensslCert({
    ...served,
    subject: '/CN=localhost',
    extensions: [
      'subjectAltName=DNS:localhost,IP:127.0.0.1',
      'basicConstraints=critical,CA:FALSE',
      'extendedKeyUsage=serverAuth',
    ],
    issuer: { cert: join(dir, `${ca}.pem`), key: join(dir, `${ca}.key`) },
  });
  return served;
}

interface AgentProcess {
  child: ChildProcess;
  dataDir: string;
  /** The agent's JSON log lines so far. */
  lines(): Record<string, unknown>[];
  stop(): Promise<void>;
}

/** What healthcheck prints (the status JSON), whether healthy or not. */
async function health(dataDir: string): Promise<HealthStatus | undefined> {
  try {
    const { stdout } = await run(process.execPath, [AGENT, 'healthcheck', '--data-dir', dataDir]);
    return JSON.parse(stdout) as HealthStatus;
  } catch (error) {
    const stdout = (error as { stdout?: string }).stdout ?? '';
    return stdout.startsWith('{') ? (JSON.parse(stdout) as HealthStatus) : undefined;
  }
}

describe('trust_bundle_url: the bootstrap bundle over HTTPS verified by the web PKI', () => {
  let dir: string;
  let server: TestServer;
  let agentPort: number;
  let endpointUrl: string;
  /** The test CA the agent process trusts through NODE_EXTRA_CA_CERTS, and only it. */
  let webCa: string;
  let serverBundlePem: string;
  let pemServer: Server;
  let pemBase: string;
  /** What the test's own HTTPS server answers, by path. */
  const served = new Map<string, string>();
  /** The query strings the test's HTTPS server was asked with. */
  const queries: string[] = [];
  const running: AgentProcess[] = [];

  const token = async (): Promise<string> => {
    const generated = await cli(['token', 'generate', '--admin-socket', server.socket, '--output', 'json']);
    const file = join(mkdtempSync(join(tmpdir(), 'ironroot-token-')), 'join-token');
    writeFileSync(file, (JSON.parse(generated.stdout) as { value: string }).value, { mode: 0o600 });
    return file;
  };

  /** `ironroot-agent run` as a process, its CAs extended by the test CA unless `trustWebCa` is false. */
  const startAgent = async (
    config: Record<string, unknown>,
    options: { dataDir?: string; trustWebCa?: boolean } = {},
  ): Promise<AgentProcess> => {
    const dataDir = options.dataDir ?? join(mkdtempSync(join(tmpdir(), 'ironroot-agent-')), 'data');
    const file = join(mkdtempSync(join(tmpdir(), 'ironroot-agent-cfg-')), 'agent.yaml');
    writeFileSync(
      file,
      stringify({
        server_address: `127.0.0.1:${agentPort}`,
        trust_domain: TD,
        data_dir: dataDir,
        socket_path: join(dataDir, '..', 'agent.sock'),
        attestation: 'join_token',
        join_token_file: await token(),
        sync_interval: '200ms',
        retry_initial: '50ms',
        retry_max: '300ms',
        ...config,
      }),
    );
    const env = { ...process.env };
    delete env.NODE_EXTRA_CA_CERTS;
    if (options.trustWebCa !== false) env.NODE_EXTRA_CA_CERTS = webCa;
    const child = spawn(process.execPath, [AGENT, 'run', '--config', file], {
      env,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let output = '';
    child.stdout?.on('data', (chunk: Buffer) => {
      output += chunk.toString();
    });
    child.stderr?.on('data', (chunk: Buffer) => {
      output += chunk.toString();
    });
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    const agent: AgentProcess = {
      child,
      dataDir,
      lines: () =>
        output
          .split('\n')
          .filter((l) => l.startsWith('{'))
          .map((l) => JSON.parse(l) as Record<string, unknown>),
      async stop() {
        if (child.exitCode === null && child.signalCode === null) {
          child.kill('SIGTERM');
          await exited;
        }
      },
    };
    running.push(agent);
    return agent;
  };

  const healthyStatus = (agent: AgentProcess) =>
    until(
      'the agent to attest',
      async () => {
        const status = await health(agent.dataDir);
        return status?.state === 'healthy' ? status : undefined;
      },
      60_000,
    );

  const failingWith = (agent: AgentProcess, code: string, attempts = 3) =>
    until(
      `the agent to fail ${attempts} times with ${code}`,
      async () => {
        const status = await health(agent.dataDir);
        return status?.last_error?.code === code && status.consecutive_failures >= attempts
          ? status
          : undefined;
      },
      60_000,
    );

  const warnLines = (agent: AgentProcess) =>
    agent
      .lines()
      .filter(
        (l) => (l.level === 'warn' || l.level === 'error' || l.level === 'fatal') && l.reason !== undefined,
      );

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'ironroot-bundle-url-'));
    webCa = await opensslCa(dir, 'web-ca', '/CN=ironroot test web CA', []);
    const web = await servingCert(dir, 'web-ca');
    // CA certificates as SPIFFE makes them, of this trust domain and of another, not the server's.
    await opensslCa(dir, 'same-td', `/O=SPIFFE/CN=${TD}`, [`subjectAltName=URI:spiffe://${TD}`]);
    await opensslCa(dir, 'other-td', '/O=SPIFFE/CN=other.org', ['subjectAltName=URI:spiffe://other.org']);
    agentPort = await freePort();
    const endpointPort = await freePort();
    server = await startTestServer({
      bind_address: `127.0.0.1:${agentPort}`,
      bundle_endpoint: {
        address: `127.0.0.1:${endpointPort}`,
        profile: 'https_web',
        cert_file: web.cert,
        key_file: web.key,
      },
    });
    endpointUrl = `https://127.0.0.1:${endpointPort}/`;
    serverBundlePem = (await cli(['bundle', 'show', '--admin-socket', server.socket, '--format', 'pem']))
      .stdout;
    served.set('/current.pem', serverBundlePem);
    served.set('/same-td.pem', readFileSync(join(dir, 'same-td.pem'), 'utf8'));
    served.set('/other-td.pem', readFileSync(join(dir, 'other-td.pem'), 'utf8'));
    pemServer = createServer({ cert: readFileSync(web.cert), key: readFileSync(web.key) }, (req, res) => {
      const [path = '', query] = (req.url ?? '').split('?');
      if (query !== undefined) queries.push(query);
      const body = served.get(path);
      res.writeHead(body === undefined ? 404 : 200, { 'content-type': 'application/x-pem-file' });
      res.end(body ?? '');
    });
    await new Promise<void>((resolve) => pemServer.listen(0, '127.0.0.1', () => resolve()));
    const address = pemServer.address();
    pemBase = `https://localhost:${typeof address === 'object' && address ? address.port : 0}`;
  });

  afterAll(async () => {
    for (const agent of running) await agent.stop();
    await new Promise((resolve) => pemServer?.close(resolve));
    await server?.stop();
  });

  describe('config', () => {
    const base = { server_address: '127.0.0.1:8081', trust_domain: TD, insecure_bootstrap: false };
    const refusal = (overrides: Record<string, unknown>) => {
      try {
        loadAgentConfig({ overrides: { ...base, ...overrides } });
      } catch (error) {
        return { code: (error as { code?: string }).code, message: (error as Error).message };
      }
      throw new Error('the config was accepted');
    };

    it('refuses an http:// trust_bundle_url, naming the key', () => {
      expect(refusal({ trust_bundle_url: 'http://bundle.example.org/' })).toEqual({
        code: 'ERR_AGENT_CONFIG_INVALID',
        message: `invalid configuration in command-line flags:\n  trust_bundle_url: got "http://bundle.example.org/"; allowed: an https:// URL serving the server's bundle, without user:password (http:// is refused: the bundle must come over TLS verified by this host's CAs)`,
      });
    });

    it('refuses a trust_bundle_url with user:password, without repeating them', () => {
      const { message } = refusal({ trust_bundle_url: 'https://agent:s3cret@bundle.example.org/' });
      expect(message).toContain('trust_bundle_url: got a URL with user:password; allowed: an https:// URL');
      expect(message).not.toContain('s3cret');
    });

    it('refuses an http:// trust_bundle_url without repeating its query (a presigned signature)', () => {
      const { message } = refusal({
        trust_bundle_url: 'http://bundle.example.org/ca.pem?X-Amz-Signature=s3cret#frag',
      });
      expect(message).toContain(
        'trust_bundle_url: got "http://bundle.example.org/ca.pem?…" (its query withheld); allowed: an https:// URL',
      );
      expect(message).not.toContain('s3cret');
    });

    it('refuses trust_bundle_url with trust_bundle, and with insecure_bootstrap, naming both keys', () => {
      expect(refusal({ trust_bundle_url: 'https://b/', trust_bundle: '/etc/bundle.pem' }).message).toContain(
        'trust_bundle_url: got "https://b/"; allowed: trust_bundle or trust_bundle_url, not both',
      );
      expect(refusal({ trust_bundle_url: 'https://b/', insecure_bootstrap: true }).message).toContain(
        'trust_bundle_url: got "https://b/"; allowed: trust_bundle_url or insecure_bootstrap: true, not both',
      );
    });

    it('refuses a trust_bundle_format other than pem or spiffe, and defaults to pem', () => {
      expect(refusal({ trust_bundle_url: 'https://b/', trust_bundle_format: 'der' }).message).toContain(
        'trust_bundle_format: got "der"; allowed: one of "pem", "spiffe"',
      );
      expect(
        loadAgentConfig({ overrides: { ...base, trust_bundle_url: 'https://b/' } }).trust_bundle_format,
      ).toBe('pem');
    });
  });

  it("bootstraps from the server's https_web bundle endpoint (spiffe format) and attests", async () => {
    const agent = await startAgent({ trust_bundle_url: endpointUrl, trust_bundle_format: 'spiffe' });
    const status = await healthyStatus(agent);
    expect(status.last_error).toBeNull();
    expect(
      agent.lines().find((l) => l.msg === 'bootstrap bundle fetched from trust_bundle_url'),
    ).toMatchObject({
      trust_bundle_url: endpointUrl,
      authorities: 1,
    });
    expect(readFileSync(join(agent.dataDir, 'bundle.pem'), 'utf8')).toBe(serverBundlePem);
  });

  it('bootstraps from a PEM file served over HTTPS (the default format) and attests', async () => {
    const agent = await startAgent({ trust_bundle_url: `${pemBase}/current.pem` });
    expect((await healthyStatus(agent)).last_error).toBeNull();
  });

  it('fetches a URL with a query (a presigned URL) as given, and never logs or reports the query', async () => {
    const agent = await startAgent({ trust_bundle_url: `${pemBase}/current.pem?X-Amz-Signature=s3cret` });
    expect((await healthyStatus(agent)).last_error).toBeNull();
    expect(queries).toContain('X-Amz-Signature=s3cret');
    expect(
      agent.lines().find((l) => l.msg === 'bootstrap bundle fetched from trust_bundle_url'),
    ).toMatchObject({ trust_bundle_url: `${pemBase}/current.pem?…` });
    expect(JSON.stringify(agent.lines())).not.toContain('s3cret');

    const failing = await startAgent({ trust_bundle_url: `${pemBase}/missing.pem?token=s3cret` });
    const status = await failingWith(failing, 'ERR_AGENT_TRUST_BUNDLE_URL');
    expect(status.last_error?.message).toBe(
      `trust_bundle_url ${pemBase}/missing.pem?…: answered HTTP 404, not 200 with the bundle; check the URL`,
    );
    expect(JSON.stringify(failing.lines())).not.toContain('s3cret');
    expect(JSON.stringify(status)).not.toContain('s3cret');
  });

  it('does not trust the URL without the web PKI: a serving CA the host does not trust is ERR_AGENT_TRUST_BUNDLE_URL', async () => {
    const agent = await startAgent({ trust_bundle_url: `${pemBase}/current.pem` }, { trustWebCa: false });
    const status = await failingWith(agent, 'ERR_AGENT_TRUST_BUNDLE_URL');
    expect(status.last_error?.message).toContain(
      `trust_bundle_url ${pemBase}/current.pem: cannot fetch it (`,
    );
    expect(status.last_error?.message).toContain('NODE_EXTRA_CA_CERTS');
    expect(status.spiffe_id).toBe('');
  });

  it('an unreachable URL is ERR_AGENT_TRUST_BUNDLE_URL naming the key and the URL, logged once', async () => {
    const url = `https://127.0.0.1:${await freePort()}/bundle.pem`;
    const agent = await startAgent({ trust_bundle_url: url });
    const status = await failingWith(agent, 'ERR_AGENT_TRUST_BUNDLE_URL');
    expect(status.last_error?.message).toMatch(
      new RegExp(`^trust_bundle_url ${url.replaceAll('.', '\\.')}: cannot fetch it \\(connect ECONNREFUSED`),
    );
    expect(warnLines(agent).map((l) => l.reason)).toEqual(['ERR_AGENT_TRUST_BUNDLE_URL']);
  });

  it('refuses a bundle of another trust domain, naming it, and does not keep it', async () => {
    const agent = await startAgent({ trust_bundle_url: `${pemBase}/other-td.pem` });
    const status = await failingWith(agent, 'ERR_AGENT_TRUST_BUNDLE_URL');
    expect(status.last_error?.message).toBe(
      `trust_bundle_url ${pemBase}/other-td.pem: serves the bundle of trust domain other.org (its CA certificate names spiffe://other.org), not of this agent's trust_domain ${TD}: refusing it`,
    );
    expect(existsSync(join(agent.dataDir, 'bundle.pem'))).toBe(false);
  });

  it('a bundle of the trust domain that does not verify the server is ERR_AGENT_TRUST_BUNDLE_STALE naming the URL; never adopted', async () => {
    const agent = await startAgent({ trust_bundle_url: `${pemBase}/same-td.pem` });
    const status = await failingWith(agent, 'ERR_AGENT_TRUST_BUNDLE_STALE');
    expect(status.last_error?.message).toContain(
      `the bundle fetched from trust_bundle_url ${pemBase}/same-td.pem`,
    );
    expect(status.spiffe_id).toBe('');
    expect(existsSync(join(agent.dataDir, 'bundle.pem'))).toBe(false);
  });

  describe('a stale bundle in data_dir (the CA the agent knew is gone)', () => {
    let dataDir: string;
    let agent: AgentProcess;
    const bundleFile = () => join(dataDir, 'bundle.pem');
    const stale = () => readFileSync(join(dir, 'same-td.pem'), 'utf8');

    beforeAll(async () => {
      const first = await startAgent({ trust_bundle_url: `${pemBase}/current.pem` });
      await healthyStatus(first);
      await first.stop();
      dataDir = first.dataDir;
      // The agent comes back to a bundle without the server's CA, as after a forced revoke.
      writeFileSync(bundleFile(), stale(), { mode: 0o600 });
      served.set('/switch.pem', served.get('/other-td.pem') ?? '');
      agent = await startAgent({ trust_bundle_url: `${pemBase}/switch.pem` }, { dataDir });
    });

    it('refuses a fetched bundle of another trust domain: stays ERR_AGENT_TRUST_BUNDLE_STALE, bundle.pem untouched, logged once', async () => {
      const status = await failingWith(agent, 'ERR_AGENT_TRUST_BUNDLE_STALE', 4);
      expect(status.last_error?.message).toContain(`the bundle kept in data_dir (${bundleFile()})`);
      expect(status.last_error?.message).toContain(
        `the agent fetches trust_bundle_url ${pemBase}/switch.pem again`,
      );
      const refused = agent
        .lines()
        .filter(
          (l) =>
            l.msg ===
            'trust_bundle_url gave no bundle that verifies the server; keeping the bundle in use and fetching again at the next retry',
        );
      expect(refused.map((l) => l.reason)).toEqual(['ERR_AGENT_TRUST_BUNDLE_URL']);
      expect(readFileSync(bundleFile(), 'utf8')).toBe(stale());
    });

    it('refuses a fetched bundle that does not verify the server: bundle.pem untouched', async () => {
      served.set('/switch.pem', served.get('/same-td.pem') ?? '');
      await until('the refusal of the second bundle', () =>
        agent
          .lines()
          .some(
            (l) =>
              l.msg?.toString().startsWith('trust_bundle_url gave no bundle') &&
              l.reason === 'ERR_AGENT_TRUST_BUNDLE_STALE',
          )
          ? true
          : undefined,
      );
      expect(readFileSync(bundleFile(), 'utf8')).toBe(stale());
      expect((await health(dataDir))?.last_error?.code).toBe('ERR_AGENT_TRUST_BUNDLE_STALE');
    });

    it("adopts the server's current bundle once the URL serves it, logs it with its size, and is healthy again", async () => {
      served.set('/switch.pem', serverBundlePem);
      const status = await healthyStatus(agent);
      expect(status.last_error).toBeNull();
      expect(readFileSync(bundleFile(), 'utf8')).toBe(serverBundlePem);
      const adopted = agent
        .lines()
        .filter(
          (l) =>
            l.msg ===
            "trust bundle adopted from trust_bundle_url: the server's certificate verifies against it",
        );
      expect(adopted).toHaveLength(1);
      expect(adopted[0]).toMatchObject({
        level: 'info',
        trust_bundle_url: `${pemBase}/switch.pem`,
        authorities: 1,
      });
      const cannot = agent
        .lines()
        .filter(
          (l) =>
            l.reason === 'ERR_AGENT_TRUST_BUNDLE_STALE' &&
            l.level === 'warn' &&
            String(l.msg).startsWith('the server cannot be authenticated'),
        );
      expect(cannot).toHaveLength(1);
    });
  });
});
