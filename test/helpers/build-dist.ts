import { execFileSync } from 'node:child_process';
import { statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/**
 * vitest global setup: compiles src/ to dist/ once, before any test file runs, so tests that drive
 * bin/ironroot-server.js run today's code and no two test processes build at the same time.
 */
export default function setup(): void {
  const root = fileURLToPath(new URL('../..', import.meta.url));
  requireReachableByOthers(root);
  execFileSync(
    process.execPath,
    [join(root, 'node_modules/typescript/bin/tsc'), '-p', 'tsconfig.build.json'],
    {
      cwd: root,
      stdio: 'inherit',
    },
  );
}

/**
 * Workload tests run node from this checkout as other uids (bin/, dist/, test fixtures), so every
 * directory above it must let others through. Without that, a score of tests fail with "Cannot find
 * module"; one error naming the directory says what to do instead.
 */
function requireReachableByOthers(root: string): void {
  for (let dir = root; ; dir = dirname(dir)) {
    if ((statSync(dir).mode & 0o001) === 0)
      throw new Error(
        `${dir} is closed to other users (mode ${(statSync(dir).mode & 0o777).toString(8)}), but the tests run workloads from ${root} as other uids: clone into a directory every user can pass through (each parent o+x, e.g. /srv or /opt, not /root or a mktemp -d directory), or chmod o+x ${dir}`,
      );
    if (dirname(dir) === dir) return;
  }
}
