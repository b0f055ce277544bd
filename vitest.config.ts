import { configDefaults, defineConfig } from 'vitest/config';

// Tests start real swtpm, SoftHSM2 and openssl processes, so they get generous timeouts and run in
// separate processes; each test file owns its own ports, sockets and directories.
export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // The appliance image test boots a whole Debian under TCG: `npm run test:image` (vitest.image.config.ts).
    exclude: [...configDefaults.exclude, 'test/image/**'],
    pool: 'forks',
    // Most of a test's time is spent waiting on the processes it started (servers, swtpm, PostgreSQL,
    // qemu), so more files than cores run at once: on 2 cores the default (one file at a time) took
    // 842 s, four at a time 404–431 s, with the same tests passing.
    maxWorkers: 4,
    // Tests drive the built executables (bin/ → dist/); build once, before any of them starts. Their
    // temporary files go under one directory for the run, removed at its end (temp-dir.ts).
    globalSetup: ['test/helpers/build-dist.ts', 'test/helpers/temp-dir.ts'],
    testTimeout: 60_000,
    // expect.poll waits for something a process does (a reconnect after backoff, a rotation): on a
    // loaded machine that can take longer than vitest's default second.
    expect: { poll: { timeout: 30_000 } },
    hookTimeout: 120_000,
    reporters: ['default'],
  },
});
