/**
 * How both executables report a failed command: one shape, on standard error, always with a stable
 * `ERR_…` code, so operators read it and scripts match on it. Standard output carries results only,
 * so a failed `--output json` command never hands a reader an error in place of data.
 *
 * @module
 */
import { type Command, CommanderError } from 'commander';
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

/** A usage error commander found itself, and the command it was found on. */
interface UsageError {
  readonly command: Command;
  readonly message: string;
}

/**
 * Makes every command of `program` throw its usage errors (unknown command or option, a missing
 * argument or required option, a value not among the choices) instead of printing them and exiting,
 * and records each, so runCli reports it with a code like any other failure.
 */
function interceptUsageErrors(command: Command, found: { error?: UsageError }): void {
  command.exitOverride();
  command.configureOutput({
    outputError: (text) => {
      // One line: commander puts its "Did you mean" on a line of its own.
      const message = text
        .trim()
        .replace(/^error: /, '')
        .replace(/\s*\n\s*/g, ' ');
      found.error = { command, message: message.replace(/\.$/, '') };
    },
  });
  for (const sub of command.commands) interceptUsageErrors(sub, found);
}

function commandPath(command: Command): string {
  const names: string[] = [];
  for (let at: Command | null = command; at !== null; at = at.parent) names.unshift(at.name());
  return names.join(' ');
}

/** The error runCli reports for a commander exit; undefined when there is none (help, version). */
function usageFailure(exit: CommanderError, found: UsageError | undefined): CliError | undefined {
  if (exit.exitCode === 0) return undefined;
  if (found !== undefined)
    return new CliError('ERR_CLI_USAGE', `${found.message}; see "${commandPath(found.command)} --help"`);
  // A command that needs a subcommand was given none: commander has printed its help.
  if (exit.code === 'commander.help')
    return new CliError('ERR_CLI_USAGE', 'a command is needed: they are listed above');
  // A command's own InvalidArgumentError: a value the flag parser took that the command then refused.
  return new CliError('ERR_CLI_USAGE', exit.message, { cause: exit });
}

/**
 * Runs `program` on `argv`; a command that throws, and a usage error commander finds, is reported by
 * formatCliError with exit status 1. `--help` and `--version` print as usual and exit 0.
 */
export async function runCli(program: Command, argv: readonly string[]): Promise<void> {
  let output: OutputFormat | undefined;
  program.hook('preAction', (_program, action) => {
    const chosen: unknown = action.opts().output;
    if (chosen === 'json' || chosen === 'text') output = chosen;
  });
  const found: { error?: UsageError } = {};
  interceptUsageErrors(program, found);
  try {
    await program.parseAsync([...argv]);
  } catch (error) {
    const failure = error instanceof CommanderError ? usageFailure(error, found.error) : error;
    if (failure === undefined) return;
    reportCliError(failure, output ?? outputInArgv(argv));
    process.exitCode = 1;
  }
}
