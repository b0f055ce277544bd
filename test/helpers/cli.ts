import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import type { Command } from 'commander';
import { builtBin } from './dist.js';

const run = promisify(execFile);

export interface CliResult {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

/** Runs `bin/ironroot-server.js` with `args` (after checking dist/ is current); resolves with the exit code instead of rejecting. */
export async function runServerCli(args: readonly string[], env: NodeJS.ProcessEnv): Promise<CliResult> {
  try {
    const { stdout, stderr } = await run(process.execPath, [builtBin('ironroot-server'), ...args], {
      env,
    });
    return { code: 0, stdout, stderr };
  } catch (error) {
    const failed = error as { code?: number; stdout?: string; stderr?: string };
    if (typeof failed.code !== 'number') throw error;
    return { code: failed.code, stdout: failed.stdout ?? '', stderr: failed.stderr ?? '' };
  }
}

/**
 * Every leaf command of a CLI program with the help text its `--help` prints, whitespace collapsed
 * (help wraps at the terminal's width). Walked in process:
 * spawning the executable once per command costs seconds each on a loaded machine, for the same text.
 */
export function leafHelps(command: Command, path: string[] = []): [string, string][] {
  if (command.commands.length === 0)
    return [[path.join(' '), command.helpInformation().replace(/\s+/g, ' ')]];
  return command.commands.flatMap((sub) => leafHelps(sub, [...path, sub.name()]));
}

/** The option line `withOutput` gives a data command, as help prints it. */
export const OUTPUT_HELP =
  '--output <format> output format ("pretty" is accepted for text, as SPIRE spells it) (choices: "text", "json", default: "text")';
