import { Command } from 'commander';
import { CliError } from '../../host/index.js';
import { AGENT_DEFAULTS } from '../config/defaults.js';
import { healthSocketPath, queryHealth } from '../health.js';

/**
 * `healthcheck`: asks the running agent over its health socket; exit 0 when healthy (or, with
 * --live, running), 1 otherwise, printing the agent's status JSON either way.
 */
export function healthcheckCommand(): Command {
  return new Command('healthcheck')
    .description(
      'ask the running agent whether it is healthy (exit 0) or not (exit 1); prints its status as JSON',
    )
    .option('--config <file>', "the agent's config file: its data_dir locates the health socket")
    .option('--data-dir <dir>', `the agent's data directory (default ${AGENT_DEFAULTS.data_dir})`)
    .option('--live', 'only check that the agent runs')
    .action(async (flags: { config?: string; dataDir?: string; live?: boolean }) => {
      let dataDir = flags.dataDir ?? AGENT_DEFAULTS.data_dir;
      if (flags.config !== undefined) {
        if (flags.dataDir !== undefined)
          throw new CliError('ERR_CLI_USAGE', 'give --config or --data-dir, not both');
        // Loaded only here: the loader brings yaml and zod, which a plain health check does not need.
        const { loadAgentConfig } = await import('../config/load.js');
        dataDir = loadAgentConfig({ file: flags.config, readToken: false }).data_dir;
      }
      const socket = healthSocketPath(dataDir);
      try {
        const { status, body } = await queryHealth(socket, flags.live ? 'live' : 'ready');
        process.stdout.write(body);
        process.exitCode = status === 200 ? 0 : 1;
      } catch (error) {
        throw new CliError(
          'ERR_AGENT_UNREACHABLE',
          `no agent answers on ${socket} (${(error as Error).message}); is it running with this ${flags.config !== undefined ? '--config' : '--data-dir'}?`,
          { cause: error },
        );
      }
    });
}
