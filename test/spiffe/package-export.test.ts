import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { beforeAll, describe, expect, it } from 'vitest';
import { assertBuilt } from '../helpers/dist.js';

const run = promisify(execFile);
const root = fileURLToPath(new URL('../../', import.meta.url));

// This test checks the built package, as a consumer sees it; `npm test` builds dist/ before vitest.
describe('ironroot/spiffe as a package export', () => {
  beforeAll(() => assertBuilt());

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
