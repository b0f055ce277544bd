import { Command } from 'commander';
import { type OutputFormat, withOutput } from '../../host/index.js';

/**
 * `validate --config FILE`: every check `run` makes before it creates, locks or binds anything
 * (schema, bootstrap bundle, data directory and its lock, the Workload API socket), without
 * starting anything. Messages, JSON and exit status as `ironroot-server validate`.
 */
export function validateCommand(): Command {
  return (
    withOutput(new Command('validate'))
      .description(
        'check a config file as run would (schema, trust bundle, data dir and its lock, Workload API socket) without starting the agent',
      )
      .requiredOption('-c, --config <file>', 'agent config file (YAML)')
      // The JSON is the server's validate's.
      .action(async (flags: { config: string; output: OutputFormat }) => {
        const { loadAgentConfig } = await import('../config/load.js');
        const { preflight } = await import('../preflight.js');
        let warnings: string[];
        try {
          ({ warnings } = await preflight(loadAgentConfig({ file: flags.config })));
        } catch (error) {
          if (flags.output !== 'json') throw error;
          // JSON readers get the stable code; the exit status still says invalid.
          const code = (error as { code?: unknown }).code;
          print(
            JSON.stringify(
              {
                valid: false,
                code: typeof code === 'string' ? code : 'ERR_INTERNAL',
                error: (error as Error).message,
              },
              null,
              2,
            ),
          );
          process.exitCode = 1;
          return;
        }
        if (flags.output === 'json') print(JSON.stringify({ valid: true, warnings }, null, 2));
        else {
          for (const warning of warnings) print(`warning: ${warning}`);
          print(`${flags.config}: configuration is valid`);
        }
      })
  );
}

function print(text: string): void {
  process.stdout.write(`${text}\n`);
}
