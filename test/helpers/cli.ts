import { execFile } from 'node:child_process';
import { existsSync, statSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const run = promisify(execFile);

const root = fileURLToPath(new URL('../../', import.meta.url));

export interface CliResult {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

/**
 * Fails with a clear message unless `dist/` holds a build of `sources` at least as new as the sources,
 * so a CLI test never runs a stale or missing build. Build with `npx tsc -p tsconfig.build.json`.
 */
export function assertBuilt(...sources: string[]): void {
  for (const source of sources) {
    const built = `${root}dist/${source.replace(/^src\//, '').replace(/\.ts$/, '.js')}`;
    if (!existsSync(built)) {
      throw new Error(`${built} is missing: run "npx tsc -p tsconfig.build.json" before the CLI tests`);
    }
    if (statSync(built).mtimeMs < statSync(`${root}${source}`).mtimeMs) {
      throw new Error(`${built} is older than ${source}: run "npx tsc -p tsconfig.build.json" again`);
    }
  }
}

/** Runs `bin/ironroot-server.js` with `args`; resolves with the exit code instead of rejecting. */
export async function runServerCli(args: readonly string[], env: NodeJS.ProcessEnv): Promise<CliResult> {
  try {
    const { stdout, stderr } = await run(process.execPath, [`${root}bin/ironroot-server.js`, ...args], {
      env,
    });
    return { code: 0, stdout, stderr };
  } catch (error) {
    const failed = error as { code?: number; stdout?: string; stderr?: string };
    if (typeof failed.code !== 'number') throw error;
    return { code: failed.code, stdout: failed.stdout ?? '', stderr: failed.stderr ?? '' };
  }
}
