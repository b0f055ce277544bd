import { type ChildProcess, spawn } from 'node:child_process';
import { createPrivateKey, X509Certificate } from 'node:crypto';
import { chownSync, mkdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { UnixAttestor } from '../../src/agent/workloadattestor/unix.js';
import { SpiffeId } from '../../src/spiffe/index.js';
import { WorkloadApiServer } from '../../src/workload-api/server.js';
import {
  AGENT_BIN,
  openTempDir,
  requireFreshDist,
  runNodeAs,
  systemUser,
  TestCa,
  TestProvider,
} from '../helpers/workload-api.js';

interface X509Json {
  svids: Array<{ spiffe_id: string; hint: string; not_after: string; certificates: string }>;
  bundles: Record<string, string>;
  files: string[];
}

/**
 * Runs openssl with `args`. With `input`, writes it to stdin and closes stdin (s_client then
 * sends it and hangs up); without, stdin stays open (s_server quits at end of stdin).
 */
function openssl(
  args: string[],
  input?: string,
): { child: ChildProcess; done: Promise<{ code: number | null; out: string }> } {
  const child = spawn('openssl', args, { stdio: ['pipe', 'pipe', 'pipe'] });
  let out = '';
  child.stdout?.on('data', (d: Buffer) => {
    out += d.toString();
  });
  child.stderr?.on('data', (d: Buffer) => {
    out += d.toString();
  });
  if (input !== undefined) child.stdin?.end(input);
  return { child, done: new Promise((resolve) => child.on('close', (code) => resolve({ code, out }))) };
}

describe('ironroot-agent api', () => {
  let dir: string;
  let server: WorkloadApiServer;
  let provider: TestProvider;
  let alice: { uid: number; gid: number };
  let bob: { uid: number; gid: number };
  let carol: { uid: number; gid: number };
  const aliceId = SpiffeId.parse('spiffe://example.org/alice');
  const bobId = SpiffeId.parse('spiffe://example.org/bob');

  const cli = (user: { uid: number; gid: number }, ...args: string[]) =>
    runNodeAs(user, [AGENT_BIN, 'api', ...args, '--socket-path', server.socketPath]);

  /** A directory `user` owns, for `--write`. */
  const ownedDir = (name: string, user: { uid: number; gid: number }) => {
    const path = join(dir, name);
    mkdirSync(path);
    chownSync(path, user.uid, user.gid);
    return path;
  };

  beforeAll(async () => {
    requireFreshDist();
    alice = await systemUser('ironroot-wapi-a');
    bob = await systemUser('ironroot-wapi-b');
    carol = await systemUser('ironroot-wapi-c');
    provider = new TestProvider(await TestCa.create('example.org'), new UnixAttestor());
    await provider.setEntries([
      { spiffeId: aliceId, selectors: [`unix:uid:${alice.uid}`], hint: 'alice' },
      { spiffeId: bobId, selectors: [`unix:uid:${bob.uid}`] },
    ]);
    provider.setFederated([(await TestCa.create('other.org')).bundle()]);
    dir = openTempDir('wapi-cli-');
    server = await WorkloadApiServer.listen({ provider, socketPath: join(dir, 'agent.sock') });
  });

  afterAll(async () => {
    await server.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('fetch x509 --write writes the SVID, a 0600 key, the bundle and federated bundles; JSON holds no key', async () => {
    const out = ownedDir('alice-write', alice);
    const result = await cli(alice, 'fetch', 'x509', '--write', out, '--output', 'json');
    expect(result.stderr).toBe('');
    expect(result.code).toBe(0);
    const data = JSON.parse(result.stdout) as X509Json;
    expect(data.svids.map((s) => [s.spiffe_id, s.hint])).toEqual([[aliceId.toString(), 'alice']]);
    expect(Object.keys(data.bundles).sort()).toEqual(['spiffe://example.org', 'spiffe://other.org']);
    expect(result.stdout).not.toContain('PRIVATE KEY');
    expect(data.files.map((f) => f.slice(out.length + 1)).sort()).toEqual([
      'bundle.0.pem',
      'federated_bundle.0.0.pem',
      'svid.0.key',
      'svid.0.pem',
    ]);
    expect(statSync(join(out, 'svid.0.key')).mode & 0o777).toBe(0o600);
    expect(statSync(join(out, 'svid.0.key')).uid).toBe(alice.uid);
    const leaf = new X509Certificate(readFileSync(join(out, 'svid.0.pem')));
    expect(leaf.subjectAltName).toBe(`URI:${aliceId}`);
    expect(leaf.checkPrivateKey(createPrivateKey(readFileSync(join(out, 'svid.0.key'))))).toBe(true);
    expect(leaf.verify(new X509Certificate(readFileSync(join(out, 'bundle.0.pem'))).publicKey)).toBe(true);
  });

  it('openssl s_server and s_client complete mutual TLS with the written SVIDs and bundle', async () => {
    const a = ownedDir('alice-tls', alice);
    const b = ownedDir('bob-tls', bob);
    expect((await cli(alice, 'fetch', 'x509', '--write', a)).code).toBe(0);
    expect((await cli(bob, 'fetch', 'x509', '--write', b)).code).toBe(0);
    const s = openssl([
      's_server',
      '-accept',
      '127.0.0.1:0',
      '-naccept',
      '1',
      '-cert',
      join(a, 'svid.0.pem'),
      '-key',
      join(a, 'svid.0.key'),
      '-CAfile',
      join(a, 'bundle.0.pem'),
      '-Verify',
      '1',
      '-verify_return_error',
    ]);
    const port = await new Promise<string>((resolve, reject) => {
      if (s.child.stdout === null) throw new Error('no stdout');
      createInterface({ input: s.child.stdout }).on('line', (line) => {
        const match = /^ACCEPT .*:(\d+)$/.exec(line);
        if (match?.[1] !== undefined) resolve(match[1]);
      });
      s.child.once('close', () => reject(new Error('s_server exited before accepting')));
    });
    const c = openssl(
      [
        's_client',
        '-connect',
        `127.0.0.1:${port}`,
        '-cert',
        join(b, 'svid.0.pem'),
        '-key',
        join(b, 'svid.0.key'),
        '-CAfile',
        join(b, 'bundle.0.pem'),
        '-verify_return_error',
      ],
      'hello-from-bob\n',
    );
    const client = await c.done;
    const serverOut = await s.done;
    expect(client.out).toContain('Verify return code: 0 (ok)');
    // The handshake happened (s_client prints "Verify return code: 0" even when it never did).
    expect(client.out).toMatch(/Peer signature type|Server certificate/);
    // Each side saw the other's SVID, as written by the CLI.
    expect(client.out).toContain(readFileSync(join(a, 'svid.0.pem'), 'utf8').trim());
    expect(serverOut.out).toContain(readFileSync(join(b, 'svid.0.pem'), 'utf8').trim());
    expect(serverOut.out).toContain('hello-from-bob');
  });

  it('openssl s_client refuses the server when given another trust domain as CA', async () => {
    const a = ownedDir('alice-tls2', alice);
    expect((await cli(alice, 'fetch', 'x509', '--write', a)).code).toBe(0);
    const s = openssl([
      's_server',
      '-accept',
      '127.0.0.1:0',
      '-naccept',
      '1',
      '-cert',
      join(a, 'svid.0.pem'),
      '-key',
      join(a, 'svid.0.key'),
    ]);
    const port = await new Promise<string>((resolve) => {
      if (s.child.stdout === null) throw new Error('no stdout');
      createInterface({ input: s.child.stdout }).on('line', (line) => {
        const match = /^ACCEPT .*:(\d+)$/.exec(line);
        if (match?.[1] !== undefined) resolve(match[1]);
      });
    });
    const c = openssl([
      's_client',
      '-connect',
      `127.0.0.1:${port}`,
      '-CAfile',
      join(a, 'federated_bundle.0.0.pem'),
      '-verify_return_error',
    ]);
    const client = await c.done;
    s.child.kill();
    await s.done;
    expect(client.code).not.toBe(0);
    expect(client.out).toMatch(/unable to get local issuer certificate|certificate verify failed/);
  });

  it('fetch jwt, validate jwt and fetch jwt-bundles print data as JSON', async () => {
    const fetched = await cli(bob, 'fetch', 'jwt', '--audience', 'reports', '--output', 'json');
    expect(fetched.code).toBe(0);
    const { svids } = JSON.parse(fetched.stdout) as { svids: Array<{ spiffe_id: string; svid: string }> };
    expect(svids.map((s) => s.spiffe_id)).toEqual([bobId.toString()]);
    const token = svids[0]?.svid ?? '';
    const validated = await cli(
      bob,
      'validate',
      'jwt',
      '--audience',
      'reports',
      '--svid',
      token,
      '--output',
      'json',
    );
    expect(validated.code).toBe(0);
    expect(JSON.parse(validated.stdout)).toMatchObject({
      spiffe_id: bobId.toString(),
      claims: { sub: bobId.toString() },
    });
    const wrong = await cli(bob, 'validate', 'jwt', '--audience', 'elsewhere', '--svid', token);
    expect(wrong.code).toBe(1);
    expect(wrong.stderr).toContain('ERR_JWTSVID_AUDIENCE_MISMATCH');
    const bundles = await cli(bob, 'fetch', 'jwt-bundles', '--output', 'json');
    const data = JSON.parse(bundles.stdout) as { bundles: Record<string, { keys: unknown[] }> };
    expect(data.bundles['spiffe://example.org']?.keys).toHaveLength(1);
  });

  it("fails with the agent's reason for a process without identity", async () => {
    const result = await cli(carol, 'fetch', 'x509');
    expect(result.code).toBe(1);
    expect(result.stderr).toContain('no identity issued');
    expect(result.stdout).toBe('');
  });

  it('watch prints the state, then every rotation, until interrupted', async () => {
    const child = spawn(
      process.execPath,
      [AGENT_BIN, 'api', 'watch', '--output', 'json', '--socket-path', server.socketPath],
      {
        uid: alice.uid,
        gid: alice.gid,
      },
    );
    const lines = createInterface({ input: child.stdout })[Symbol.asyncIterator]();
    const next = async () => JSON.parse(String((await lines.next()).value)) as Omit<X509Json, 'files'>;
    const first = await next();
    await provider.rotate();
    const second = await next();
    expect(first.svids[0]?.spiffe_id).toBe(aliceId.toString());
    expect(second.svids[0]?.certificates).not.toBe(first.svids[0]?.certificates);
    const exit = new Promise((resolve) => child.on('exit', resolve));
    child.kill('SIGINT');
    expect(await exit).toBe(0);
  });
});
