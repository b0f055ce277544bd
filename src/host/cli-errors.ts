/**
 * How both executables report a failed command: one shape, on standard error, always with a stable
 * `ERR_…` code, so operators read it and scripts match on it. Standard output carries results only,
 * so a failed `--output json` command never hands a reader an error in place of data.
 *
 * @module
 */
import type { Command } from 'commander';
import type { OutputFormat } from './output.js';

const STABLE_CODE = /^ERR_[A-Z0-9_]+$/;

/** The code of an error that has none of its own: a bug or an unforeseen fault, detailed in its message. */
export const UNCODED_ERROR = 'ERR_INTERNAL';

/** A command-line failure that is not another module's error: a bad flag, an unreadable file … */
export class CliError extends Error {
  override name = 'CliError';
  readonly code: string;

  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
  }
}

/** The stable code of `error`: `errorCode` (an admin call's) or `code`, when either is an `ERR_…` code. */
export function errorCodeOf(error: unknown): string | undefined {
  if (typeof error !== 'object' || error === null) return undefined;
  for (const key of ['errorCode', 'code']) {
    const value: unknown = Reflect.get(error, key);
    if (typeof value === 'string' && STABLE_CODE.test(value)) return value;
  }
  return undefined;
}

/**
 * `Error (ERR_CODE): message` in text, `{"error": {"code": …, "message": …}}` (one line) in JSON.
 * A message that starts with its own code says it once.
 */
export function formatCliError(error: unknown, output: OutputFormat): string {
  const code = errorCodeOf(error) ?? UNCODED_ERROR;
  let message = error instanceof Error ? error.message : String(error);
  if (message.startsWith(`${code}: `)) message = message.slice(code.length + 2);
  if (output === 'json') return `${JSON.stringify({ error: { code, message } })}\n`;
  return `Error (${code}): ${message}\n`;
}

export function reportCliError(error: unknown, output: OutputFormat): void {
  process.stderr.write(formatCliError(error, output));
}

/**
 * The --output a command line asks for, read from argv itself: a flag parser that throws does so
 * before the command's options exist.
 */
function outputInArgv(argv: readonly string[]): OutputFormat {
  let output: OutputFormat = 'text';
  argv.forEach((arg, i) => {
    if (arg === '--json' || arg === '--output=json' || (arg === '--output' && argv[i + 1] === 'json'))
      output = 'json';
    else if (arg.startsWith('--output')) output = 'text';
  });
  return output;
}

/**
 * Runs `program` on `argv`; a command that throws is reported by formatCliError with exit status 1.
 * Usage errors commander detects itself (unknown option, missing argument) keep its own message and help.
 */
export async function runCli(program: Command, argv: readonly string[]): Promise<void> {
  let output: OutputFormat | undefined;
  program.hook('preAction', (_program, action) => {
    const chosen: unknown = action.opts().output;
    if (chosen === 'json' || chosen === 'text') output = chosen;
  });
  try {
    await program.parseAsync([...argv]);
  } catch (error) {
    reportCliError(error, output ?? outputInArgv(argv));
    process.exitCode = 1;
  }
}
