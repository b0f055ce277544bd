import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { beforeAll, describe, expect, it } from 'vitest';
import { requireFreshDist } from '../helpers/workload-api.js';

const run = promisify(execFile);
const root = fileURLToPath(new URL('../../', import.meta.url));

describe('ironroot/workload-api as a package export', () => {
  beforeAll(() => requireFreshDist());

  it('resolves by self-reference and finds the proto beside dist/', async () => {
    const script = [
      "import { WorkloadApiClient, WorkloadApiError, DEFAULT_SOCKET_PATH } from 'ironroot/workload-api';",
      "const client = new WorkloadApiClient({ address: 'unix:///nonexistent/agent.sock' });",
      "let code = '';",
      'try { await client.fetchX509Context(); } catch (e) { code = e instanceof WorkloadApiError ? e.code : String(e); }',
      'client.close();',
      'console.log(JSON.stringify({ code, DEFAULT_SOCKET_PATH }));',
    ].join('\n');
    const { stdout } = await run(process.execPath, ['--input-type=module', '-e', script], { cwd: root });
    expect(JSON.parse(stdout)).toEqual({
      code: 'ERR_WORKLOADAPI_UNAVAILABLE',
      DEFAULT_SOCKET_PATH: '/run/ironroot-agent/public/api.sock',
    });
  });

  it('ships type declarations beside the JavaScript', () => {
    expect(existsSync(join(root, 'dist/workload-api/index.d.ts'))).toBe(true);
  });
});
