import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { repoRoot } from './helpers/dist.js';

/**
 * The layout table of docs/architecture.md, read from the document itself so the enforced rules and
 * the documented ones cannot drift apart: for each `src/<area>/` row, which of our modules it may import.
 * `src/version.ts` is imported as `version.js`.
 */
function layoutTable(): Record<string, readonly string[]> {
  const doc = readFileSync(join(repoRoot, 'docs', 'architecture.md'), 'utf8');
  // Cells may be padded to align the columns.
  const rows = [...doc.matchAll(/^\| `src\/([a-z-]+)\/`\s*\|[^|]*\|\s*([^|]*?)\s*\|$/gm)];
  return Object.fromEntries(
    rows.map(([, area = '', imports = '']) => [
      area,
      imports.trim() === 'nothing of ours'
        ? []
        : imports.split(',').map((name) => name.trim().replace(/^`version\.ts`$/, 'version.js')),
    ]),
  );
}

const ALLOWED = layoutTable();

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

describe('module layout (docs/architecture.md)', () => {
  const files = sourceFiles(src);

  it('reads the layout table', () => {
    expect(Object.keys(ALLOWED).sort()).toEqual(
      ['agent', 'agent-api', 'demo', 'der', 'host', 'hsm', 'server', 'spiffe', 'tpm', 'workload-api'].sort(),
    );
    expect(ALLOWED.server).toContain('tpm');
  });

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
