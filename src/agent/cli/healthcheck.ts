import { Command } from 'commander';
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
        if (flags.dataDir !== undefined) {
          process.stderr.write('ironroot-agent: give --config or --data-dir, not both\n');
          process.exitCode = 1;
          return;
        }
        try {
          const { loadAgentConfig } = await import('../config/load.js');
          dataDir = loadAgentConfig({ file: flags.config, readToken: false }).data_dir;
        } catch (error) {
          process.stderr.write(`ironroot-agent: ${(error as Error).message}\n`);
          process.exitCode = 1;
          return;
        }
      }
      const socket = healthSocketPath(dataDir);
      try {
        const { status, body } = await queryHealth(socket, flags.live ? 'live' : 'ready');
        process.stdout.write(body);
        process.exitCode = status === 200 ? 0 : 1;
      } catch (error) {
        process.stderr.write(
          `ironroot-agent: no agent answers on ${socket} (${(error as Error).message}); is it running with this ${flags.config !== undefined ? '--config' : '--data-dir'}?\n`,
        );
        process.exitCode = 1;
      }
    });
}
