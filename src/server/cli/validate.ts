import { Command } from 'commander';
import { loadConfig } from '../config/load.js';
import { preflight } from '../preflight.js';
import { type OutputFormat, print, printJson, withOutput } from './common.js';

/**
 * `validate --config FILE`: every check `run` makes before it creates or binds anything (schema,
 * safety, TPM policy and firmware profiles, upstream CA, directories, the data directory's lock,
 * the admin socket), without starting anything.
 */
export function validateCommand(): Command {
  return withOutput(
    new Command('validate').description(
      "check a config file as run would (schema, safety, TPM policy, directories, the data dir's trust domain and lock, admin socket) without starting the server",
    ),
  )
    .requiredOption('-c, --config <file>', 'server config file (YAML)')
    .action(async (flags: { config: string; output: OutputFormat }) => {
      let warnings: string[];
      try {
        ({ warnings } = await preflight(loadConfig({ file: flags.config })));
      } catch (error) {
        if (flags.output !== 'json') throw error;
        // JSON readers get the stable code; the exit status still says invalid.
        const code = (error as { code?: unknown }).code;
        printJson({
          valid: false,
          code: typeof code === 'string' ? code : 'ERR_INTERNAL',
          error: (error as Error).message,
        });
        process.exitCode = 1;
        return;
      }
      if (flags.output === 'json') printJson({ valid: true, warnings });
      else {
        for (const warning of warnings) print(`warning: ${warning}`);
        print(`${flags.config}: configuration is valid`);
      }
    });
}
