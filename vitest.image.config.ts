import { defineConfig } from 'vitest/config';

// `npm run test:image`: the appliance image booted under qemu TCG (test/image/). Apart from `npm test`
// because each boot takes minutes on TCG and a first build of the image far longer; the image is
// built (or taken from its cache) in the test's own set-up, hence the long hook timeout.
export default defineConfig({
  test: {
    include: ['test/image/**/*.test.ts'],
    pool: 'forks',
    testTimeout: 900_000,
    hookTimeout: 3_600_000,
    reporters: ['default'],
  },
});
