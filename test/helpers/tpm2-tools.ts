/**
 * Runs tpm2-tools as the independent oracle in tests (product code never calls them).
 */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';

const run = promisify(execFile);

/**
 * Runs `tool args…` against `tcti` and returns stdout: `none` for tools that can run without a TPM
 * (`-T none`), `null` for tools that take no TCTI at all (tpm2_checkquote). On failure the error
 * message carries the tool's stderr.
 */
export async function tpm2(tool: string, args: readonly string[], tcti: string | null): Promise<string> {
  try {
    // tpm2-tools take "none" only as an option, not through TPM2TOOLS_TCTI.
    const argv = tcti === 'none' ? ['-T', 'none', ...args] : [...args];
    const { stdout } = await run(tool, argv, {
      env: tcti === null ? process.env : { ...process.env, TPM2TOOLS_TCTI: tcti },
      encoding: 'utf8',
      maxBuffer: 16 * 1024 * 1024,
    });
    return stdout;
  } catch (error) {
    const stderr = (error as { stderr?: string }).stderr ?? '';
    throw new Error(`${tool} ${args.join(' ')} failed: ${stderr.trim() || String(error)}`);
  }
}
