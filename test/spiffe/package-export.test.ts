import { execFile } from 'node:child_process';
import { existsSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { beforeAll, describe, expect, it } from 'vitest';

const run = promisify(execFile);
const root = fileURLToPath(new URL('../../', import.meta.url));
const built = join(root, 'dist/spiffe/index.js');

/** Newest modification time under `dir`. */
function newest(dir: string): number {
  return Math.max(
    ...readdirSync(dir, { withFileTypes: true }).map((e) =>
      e.isDirectory() ? newest(join(dir, e.name)) : statSync(join(dir, e.name)).mtimeMs,
    ),
  );
}

// This test checks the built package, as a consumer sees it; `npm test` builds dist/ before vitest.
describe('ironroot/spiffe as a package export', () => {
  beforeAll(() => {
    if (!existsSync(built)) {
      throw new Error(
        `${built} is missing: run "npx tsc -p tsconfig.build.json" (or "npm test", which builds first)`,
      );
    }
    if (newest(join(root, 'src/spiffe')) > statSync(built).mtimeMs) {
      throw new Error('dist/spiffe is older than src/spiffe: rebuild with "npx tsc -p tsconfig.build.json"');
    }
  });

  it('resolves by self-reference from the repository root and works', async () => {
    const script = [
      "import { SpiffeId, TrustDomain, SpiffeError } from 'ironroot/spiffe';",
      "const id = SpiffeId.parse('spiffe://example.org/web');",
      "let code = '';",
      "try { TrustDomain.parse('Bad.org'); } catch (e) { code = e instanceof SpiffeError ? e.code : 'other'; }",
      'console.log(JSON.stringify({ td: id.trustDomain.name, path: id.path, code }));',
    ].join('\n');
    const { stdout } = await run(process.execPath, ['--input-type=module', '-e', script], { cwd: root });
    expect(JSON.parse(stdout)).toEqual({
      td: 'example.org',
      path: '/web',
      code: 'ERR_TRUSTDOMAIN_UPPERCASE',
    });
  });

  it('ships type declarations beside the JavaScript', () => {
    expect(existsSync(join(root, 'dist/spiffe/index.d.ts'))).toBe(true);
  });
});
