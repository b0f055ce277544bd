import { existsSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The checkout's root directory. */
export const repoRoot: string = fileURLToPath(new URL('../../', import.meta.url));

/** Newest modification time of any file under `dir`. */
function newest(dir: string): number {
  return Math.max(
    ...readdirSync(dir, { withFileTypes: true }).map((entry) =>
      entry.isDirectory() ? newest(join(dir, entry.name)) : statSync(join(dir, entry.name)).mtimeMs,
    ),
  );
}

/**
 * Fails clearly unless dist/ holds a build of the current src/. Test files never build dist/
 * themselves (they run in parallel and a rebuild would race with the ones already loading it);
 * vitest's global setup (build-dist.ts) builds once before any of them starts.
 */
export function assertBuilt(): void {
  const marker = join(repoRoot, 'dist/version.js');
  if (!existsSync(marker)) {
    throw new Error(
      'dist/ is missing: run "npx tsc -p tsconfig.build.json" (or "npm test", which builds first)',
    );
  }
  if (newest(join(repoRoot, 'src')) > statSync(marker).mtimeMs) {
    throw new Error('dist/ is older than src/: rebuild with "npx tsc -p tsconfig.build.json"');
  }
}

/** Path of one of the package's executables, after checking that dist/ is current. */
export function builtBin(name: 'ironroot-server' | 'ironroot-agent'): string {
  assertBuilt();
  return join(repoRoot, 'bin', `${name}.js`);
}
