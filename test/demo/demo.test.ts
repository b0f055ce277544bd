/**
 * `npm run demo` end to end: the demo script run as a child process, as `npm run demo` runs it after
 * bootstrap and the build (vitest's global setup builds dist/). Asserts on what the summary
 * claims, and that nothing the demo started outlives it.
 */
import { spawn } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { assertBuilt, repoRoot } from '../helpers/dist.js';

const DEMO = join(repoRoot, 'scripts', 'demo.mjs');
const TD = 'example.org';

interface DemoRun {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/**
 * Runs the demo script. `onOutput` sees standard output as it grows and may signal the process
 * (for --keep); the promise resolves when the process has exited.
 */
function runDemo(
  args: readonly string[],
  options: { env?: NodeJS.ProcessEnv; onOutput?: (stdout: string, pid: number) => void } = {},
): Promise<DemoRun> {
  assertBuilt();
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [DEMO, ...args], {
      cwd: repoRoot,
      env: options.env ?? process.env,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk: Buffer) => {
      stdout += chunk.toString();
      if (child.pid !== undefined) options.onOutput?.(stdout, child.pid);
    });
    child.stderr.on('data', (chunk: Buffer) => {
      stderr += chunk.toString();
    });
    child.once('error', reject);
    child.once('close', (code, signal) => resolve({ code, signal, stdout, stderr }));
  });
}

/** The demo's temporary directory, as its first step prints it. */
function demoDir(stdout: string): string {
  const match = /^ {4}(\/\S*ironroot-demo-\S+) \(removed at exit\)$/m.exec(stdout);
  if (!match?.[1]) throw new Error(`the demo printed no directory:\n${stdout}`);
  return match[1];
}

/** PIDs the demo reported for the processes it started. */
function reportedPids(stdout: string): number[] {
  return [...stdout.matchAll(/\bpid (\d+)\b/g)].map((m) => Number(m[1]));
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code !== 'ESRCH';
  }
}

/** Live processes whose command line or environment names `dir` (swtpm, server, agent, workloads). */
function processesUsing(dir: string): string[] {
  const found: string[] = [];
  for (const pid of readdirSync('/proc').filter((name) => /^\d+$/.test(name))) {
    try {
      const cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
      const environ = readFileSync(`/proc/${pid}/environ`, 'utf8');
      if (cmdline.includes(dir) || environ.includes(dir))
        found.push(`${pid}: ${cmdline.replaceAll('\0', ' ')}`);
    } catch {
      // Gone meanwhile, or not ours to read.
    }
  }
  return found;
}

function demoDirsNow(): Set<string> {
  return new Set(readdirSync(tmpdir()).filter((name) => name.startsWith('ironroot-demo-')));
}

describe('npm run demo', () => {
  it('attests the agent by its TPM, serves SVIDs through the Workload API, runs an mTLS exchange, and leaves nothing behind', async () => {
    const run = await runDemo([]);
    const explain = `stdout:\n${run.stdout}\nstderr:\n${run.stderr}`;
    expect(run.code, explain).toBe(0);

    const out = run.stdout;
    expect(out).toMatch(new RegExp(`^ {2}trust domain +${TD}$`, 'm'));
    // The agent is named by the hash of its EK, and the record agrees with the name.
    const agent = new RegExp(
      `^ {2}agent +(spiffe://${TD.replace('.', '\\.')}/agent/tpm/[0-9a-f]{64})$`,
      'm',
    ).exec(out);
    expect(agent, explain).not.toBeNull();
    expect(out).toContain('(EK hash matches the ID)');
    expect(out).toMatch(/^ {4}EK cert +issuer ".*CN=swtpm-localca.*"$/m);
    expect(out).toMatch(/^ {4}PCRs quoted +sha256:0-7$/m);
    // The X.509-SVID of the demo process, its JWT-SVID, validated by the agent.
    expect(out).toMatch(new RegExp(`^ {2}workload +spiffe://${TD}/demo/user `, 'm'));
    expect(out).toMatch(new RegExp(`^ {4}JWT-SVID +sub=spiffe://${TD}/demo/user aud=ironroot-demo `, 'm'));
    expect(out).toMatch(new RegExp(`validated by the agent: spiffe://${TD}/demo/user$`, 'm'));
    // Each workload verified the other's SVID and saw the other's line.
    expect(out).toMatch(
      new RegExp(`^ {2}mTLS +spiffe://${TD}/demo/client → spiffe://${TD}/demo/server$`, 'm'),
    );
    expect(out).toMatch(
      new RegExp(
        `^ {4}server saw +spiffe://${TD}/demo/client: "hello spiffe://${TD}/demo/server, this is spiffe://${TD}/demo/client"$`,
        'm',
      ),
    );
    expect(out).toMatch(
      new RegExp(
        `^ {4}client saw +spiffe://${TD}/demo/server: "hello spiffe://${TD}/demo/client, this is spiffe://${TD}/demo/server"$`,
        'm',
      ),
    );
    expect(out).toContain('mTLS exchange: OK');
    // Secrets stay out of the output.
    expect(out + run.stderr).not.toMatch(/BEGIN (EC |RSA )?PRIVATE KEY/);
    expect(out + run.stderr).not.toMatch(/eyJ[\w-]+\.eyJ[\w-]+\.[\w-]+/);

    const dir = demoDir(out);
    expect(existsSync(dir)).toBe(false);
    const pids = reportedPids(out);
    expect(pids.length).toBeGreaterThanOrEqual(5); // swtpm, server, agent, two workloads
    expect(pids.filter(alive)).toEqual([]);
    expect(processesUsing(dir)).toEqual([]);
  }, 240_000);

  it('with --keep, keeps everything running until Ctrl-C, then stops it all and removes its directory', async () => {
    let seen:
      | { dir: string; pids: number[]; running: number[]; using: string[]; pin: string; pinMode: number }
      | undefined;
    const run = await runDemo(['--keep'], {
      onOutput: (stdout, pid) => {
        if (seen !== undefined || !stdout.includes('Press Ctrl-C')) return;
        const pids = reportedPids(stdout);
        const dir = demoDir(stdout);
        const pinFile = join(dir, 'softhsm', 'user.pin');
        seen = {
          dir,
          pids,
          running: pids.filter(alive),
          using: processesUsing(dir),
          pin: readFileSync(pinFile, 'utf8').trim(),
          pinMode: statSync(pinFile).mode & 0o777,
        };
        process.kill(pid, 'SIGINT');
      },
    });
    const explain = `stdout:\n${run.stdout}\nstderr:\n${run.stderr}`;
    expect(seen, explain).toBeDefined();
    expect(run.code, explain).toBe(0);
    expect(run.stdout).toMatch(/^ {2}export SPIFFE_ENDPOINT_SOCKET=unix:\/\/\/\S+\/workload\.sock$/m);
    // swtpm, server and agent were alive while the demo waited (the workloads had finished).
    expect(seen?.running.length).toBeGreaterThanOrEqual(3);
    // …and the /proc scan used below finds them, so its empty answer after exit means something.
    expect(seen?.using.length).toBeGreaterThanOrEqual(3);
    // The SoftHSM PIN lives in a 0600 file and never in the output.
    expect(seen?.pinMode).toBe(0o600);
    expect(seen?.pin).toMatch(/^[0-9a-f]{24}$/);
    expect(run.stdout + run.stderr).not.toContain(seen?.pin);
    expect(existsSync(seen?.dir ?? '/')).toBe(false);
    expect((seen?.pids ?? []).filter(alive)).toEqual([]);
    expect(processesUsing(seen?.dir ?? '/nonexistent')).toEqual([]);
  }, 240_000);

  it('stops what it started and removes its directory when terminated in the middle of a step', async () => {
    let seen: { dir: string; pids: number[] } | undefined;
    const run = await runDemo([], {
      onOutput: (stdout, pid) => {
        // Step 6 has started the agent, with swtpm and the server already running.
        if (seen !== undefined || !/^\[6\] /m.test(stdout)) return;
        seen = { dir: demoDir(stdout), pids: reportedPids(stdout) };
        process.kill(pid, 'SIGTERM');
      },
    });
    const explain = `stdout:\n${run.stdout}\nstderr:\n${run.stderr}`;
    expect(seen, explain).toBeDefined();
    expect(run.code, explain).toBe(143);
    expect(run.stdout).toContain('interrupted by SIGTERM: stopping');
    expect(run.stdout).not.toContain('ironroot demo: summary');
    expect(seen?.pids.length).toBeGreaterThanOrEqual(2); // swtpm and the server
    expect((seen?.pids ?? []).filter(alive)).toEqual([]);
    expect(existsSync(seen?.dir ?? '/')).toBe(false);
    expect(processesUsing(seen?.dir ?? '/nonexistent')).toEqual([]);
  }, 120_000);

  it('refuses an unknown flag with the usage and exit status 2, creating nothing', async () => {
    const before = demoDirsNow();
    const run = await runDemo(['--no-such-flag']);
    expect(run.code).toBe(2);
    expect(run.stderr).toContain("demo: Unknown option '--no-such-flag'");
    expect(run.stderr).toContain('Usage: npm run demo');
    expect([...demoDirsNow()].filter((d) => !before.has(d))).toEqual([]);
  });

  it('prints its help', async () => {
    const run = await runDemo(['--help']);
    expect(run.code).toBe(0);
    expect(run.stdout).toContain('--keep');
    expect(run.stdout).toContain('--trust-domain');
  });

  it('names the step that failed and still removes its directory (swtpm missing from PATH)', async () => {
    const run = await runDemo([], { env: { ...process.env, PATH: '/nonexistent' } });
    expect(run.code).toBe(1);
    expect(run.stderr).toMatch(
      /demo: step 3 "manufacture a swtpm with EK certificates \(swtpm-localca\) and start it" failed: .*swtpm_setup not found on PATH/,
    );
    const dir = demoDir(run.stdout);
    expect(existsSync(dir)).toBe(false);
    expect(processesUsing(dir)).toEqual([]);
  });
});
