/**
 * The output flag every data command of both executables shares, so both spell it alike.
 *
 * @module
 */
import { type Command, InvalidArgumentError, Option } from 'commander';

export type OutputFormat = 'text' | 'json';

/**
 * `--output text|json`, the one output flag of every data command. SPIRE spells text `pretty`, so
 * that is accepted as its alias; `--json`, which some commands took before, still works, hidden.
 */
export function withOutput(command: Command): Command {
  return command
    .addOption(
      new Option('--output <format>', 'output format ("pretty" is accepted for text, as SPIRE spells it)')
        .choices(['text', 'json'])
        .default('text' satisfies OutputFormat)
        .argParser((value): OutputFormat => {
          if (value === 'text' || value === 'pretty') return 'text';
          if (value === 'json') return 'json';
          throw new InvalidArgumentError('allowed: text, json (or pretty, the same as text)');
        }),
    )
    .addOption(new Option('--json', 'deprecated: --output json').hideHelp().implies({ output: 'json' }));
}
