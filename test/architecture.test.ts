import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { repoRoot } from './helpers/dist.js';

// The layout table of ARCHITECTURE.md: which of our modules each area may import. `version.js` (src/version.ts) is
// the package version, shared by both executables.
const ALLOWED: Record<string, readonly string[]> = {
  spiffe: [],
  tpm: [],
  hsm: [],
  'workload-api': ['spiffe'],
  'agent-api': [],
  agent: ['spiffe', 'tpm', 'workload-api', 'agent-api', 'version.js'],
  server: ['spiffe', 'tpm', 'hsm', 'agent-api', 'version.js'],
  // The end-to-end demo (npm run demo) drives the executables as child processes and uses the Workload API
  // client as a workload would; it needs no server or agent internals.
  demo: ['spiffe', 'workload-api'],
};

const src = join(repoRoot, 'src');

function sourceFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) =>
    entry.isDirectory()
      ? sourceFiles(join(dir, entry.name))
      : entry.name.endsWith('.ts')
        ? [join(dir, entry.name)]
        : [],
  );
}

/** The top-level part of src/ a file belongs to: a folder name, or the file name for files at the top. */
function areaOf(path: string): string {
  return relative(src, path).split('/')[0] ?? '';
}

function relativeImports(file: string): string[] {
  const text = readFileSync(file, 'utf8');
  return [...text.matchAll(/(?:from|import)\s*\(?\s*'(\.{1,2}\/[^']+)'/g)].map((m) => m[1] ?? '');
}

describe('module layout (ARCHITECTURE.md)', () => {
  const files = sourceFiles(src);

  it('finds the source tree', () => {
    expect(files.length).toBeGreaterThan(50);
  });

  it.each(Object.keys(ALLOWED))('src/%s imports only what its row allows', (area) => {
    const allowed = new Set([area, ...(ALLOWED[area] ?? [])]);
    const violations = files
      .filter((file) => areaOf(file) === area)
      .flatMap((file) =>
        relativeImports(file)
          .map((spec) => areaOf(resolve(dirname(file), spec)))
          .filter((target) => !allowed.has(target))
          .map((target) => `${relative(repoRoot, file)} imports ${target}`),
      );
    expect(violations).toEqual([]);
  });

  it('has no top-level area missing from the table', () => {
    const areas = new Set(files.map(areaOf).filter((area) => !area.endsWith('.ts') && !area.endsWith('.js')));
    expect([...areas].filter((area) => !(area in ALLOWED))).toEqual([]);
  });
});
