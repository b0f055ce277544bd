import { configDefaults, defineConfig } from 'vitest/config';

// Tests start real swtpm, SoftHSM2 and openssl processes, so they get generous timeouts and run in
// separate processes; each test file owns its own ports, sockets and directories.
export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // The appliance image test boots a whole Debian under TCG: `npm run test:image` (vitest.image.config.ts).
    exclude: [...configDefaults.exclude, 'test/image/**'],
    pool: 'forks',
    // Tests drive the built executables (bin/ → dist/); build once, before any of them starts.
    globalSetup: ['test/helpers/build-dist.ts'],
    testTimeout: 60_000,
    hookTimeout: 120_000,
    reporters: ['default'],
  },
});
