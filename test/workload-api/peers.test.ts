import { type ChildProcess, spawn } from 'node:child_process';
import { realpathSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { status } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { UnixAttestor } from '../../src/agent/workloadattestor/unix.js';
import { SpiffeId } from '../../src/spiffe/index.js';
import type { Selector } from '../../src/workload-api/provider.js';
import { WorkloadApiServer } from '../../src/workload-api/server.js';
import { openTempDir, systemUser, TestCa, TestProvider } from '../helpers/workload-api.js';

const fixture = (name: string) => fileURLToPath(new URL(`./fixtures/${name}`, import.meta.url));
const proto = fileURLToPath(new URL('../../proto/workload.proto', import.meta.url));
const cwd = fileURLToPath(new URL('../../', import.meta.url));

interface FetchResult {
  code: number;
  details?: string;
  spiffeIds?: string[];
}

/** Runs the standard-client fixture as `user` and returns its one-line JSON answer. */
function fetchAs(
  user: { uid: number; gid: number },
  socketPath: string,
  ...flags: string[]
): Promise<FetchResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [fixture('raw-fetch.mjs'), socketPath, proto, ...flags], {
      uid: user.uid,
      gid: user.gid,
      cwd,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
    });
    child.stderr.on('data', (d: Buffer) => {
      err += d.toString();
    });
    child.on('close', (code) => {
      if (code !== 0) reject(new Error(`fixture exited ${code}: ${err}`));
      else resolve(JSON.parse(out) as FetchResult);
    });
  });
}

/** JSON lines of a child's stdout, one at a time. */
function lines(child: ChildProcess): () => Promise<Record<string, unknown>> {
  if (child.stdout === null) throw new Error('child has no stdout pipe');
  const iterator = createInterface({ input: child.stdout })[Symbol.asyncIterator]();
  return async () => {
    const next = await iterator.next();
    if (next.done === true) throw new Error('child closed stdout before answering');
    return JSON.parse(next.value) as Record<string, unknown>;
  };
}

describe('Workload API callers identified by the kernel', () => {
  let dir: string;
  let server: WorkloadApiServer;
  let provider: TestProvider;
  let alice: { uid: number; gid: number };
  let bob: { uid: number; gid: number };
  let carol: { uid: number; gid: number };
  const attested: Array<{ pid: number; selectors: Selector[] }> = [];
  const connected: number[] = [];
  const aliceId = SpiffeId.parse('spiffe://example.org/alice');
  const bobId = SpiffeId.parse('spiffe://example.org/bob');

  beforeAll(async () => {
    alice = await systemUser('ironroot-wapi-a');
    bob = await systemUser('ironroot-wapi-b');
    carol = await systemUser('ironroot-wapi-c');
    const unix = new UnixAttestor();
    const recording = {
      attest: async (pid: number) => {
        const selectors = await unix.attest(pid);
        attested.push({ pid, selectors });
        return selectors;
      },
    };
    provider = new TestProvider(await TestCa.create('example.org'), recording);
    await provider.setEntries([
      { spiffeId: aliceId, selectors: [`unix:uid:${alice.uid}`, 'unix:user:ironroot-wapi-a'] },
      { spiffeId: bobId, selectors: [`unix:uid:${bob.uid}`, `unix:path:${realpathSync(process.execPath)}`] },
    ]);
    dir = openTempDir('wapi-peers-');
    server = await WorkloadApiServer.listen({
      provider,
      socketPath: join(dir, 'agent.sock'),
      logger: {
        debug: (fields) => {
          if (typeof fields.pid === 'number') connected.push(fields.pid);
        },
        info: () => {},
        warn: () => {},
      },
    });
  });

  afterAll(async () => {
    await server.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('gives each uid only its own identity', async () => {
    expect(await fetchAs(alice, server.socketPath)).toEqual({ code: 0, spiffeIds: [aliceId.toString()] });
    expect(await fetchAs(bob, server.socketPath)).toEqual({ code: 0, spiffeIds: [bobId.toString()] });
    const callers = provider.callers.map((c) => c.uid);
    expect(callers).toContain(alice.uid);
    expect(callers).toContain(bob.uid);
  });

  it('answers PermissionDenied to a uid with no entry', async () => {
    expect(await fetchAs(carol, server.socketPath)).toMatchObject({ code: status.PERMISSION_DENIED });
  });

  it('answers InvalidArgument to a request without the security header', async () => {
    expect(await fetchAs(alice, server.socketPath, '--no-header')).toEqual({
      code: status.INVALID_ARGUMENT,
      details: 'security header missing from request',
    });
  });

  it('refuses a connection whose pid now names another process (PID reuse)', async () => {
    // A (uid carol, no identity) connects; the server records A's pid and start time. A hands the
    // connection to B and exits. The pid is then given to C, running as alice, who has an identity.
    // B's call makes the server attest "A's" pid, which is now C: without the start-time check, B
    // would receive alice's SVID.
    const a = spawn(
      process.execPath,
      [fixture('pid-reuse-connector.mjs'), server.socketPath, fixture('pid-reuse-holder.mjs')],
      {
        uid: carol.uid,
        gid: carol.gid,
        cwd,
        stdio: ['ignore', 'pipe', 'inherit'],
      },
    );
    const next = lines(a);
    const { connected: aPid } = (await next()) as { connected: number };
    expect(aPid).toBe(a.pid);
    await expect.poll(() => connected.includes(aPid)).toBe(true);
    const exited = new Promise((resolve) => a.once('exit', resolve));
    a.kill('SIGUSR2');
    const { ready: bPid } = (await next()) as { ready: number };
    await exited;
    let c: ChildProcess | undefined;
    try {
      // The kernel hands out the pid after ns_last_pid next; other processes forking at the same
      // moment can take it first, so try again until C gets A's pid.
      for (let attempt = 0; attempt < 200 && c?.pid !== aPid; attempt++) {
        c?.kill('SIGKILL');
        writeFileSync('/proc/sys/kernel/ns_last_pid', String(aPid - 1));
        c = spawn('sleep', ['60'], { uid: alice.uid, gid: alice.gid, stdio: 'ignore' });
      }
      expect(c?.pid).toBe(aPid);
      process.kill(bPid, 'SIGUSR2');
      const answer = await next();
      expect(answer).toMatchObject({ status: status.PERMISSION_DENIED });
      expect(String(answer.message)).toContain('has exited');
      // The attestor did describe C (alice) for that pid: the start-time check is what refused it.
      expect(attested.filter((x) => x.pid === aPid).at(-1)?.selectors).toContain(`unix:uid:${alice.uid}`);
    } finally {
      c?.kill('SIGKILL');
      try {
        process.kill(bPid, 'SIGKILL');
      } catch {
        // Already gone.
      }
    }
  });
});
