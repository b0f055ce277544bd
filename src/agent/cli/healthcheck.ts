import { Command } from 'commander';
import { AGENT_DEFAULTS } from '../config/schema.js';
import { healthSocketPath, queryHealth } from '../health.js';

/** `healthcheck`: asks the running agent over its health socket; exit 0 when ready (or live). */
export function healthcheckCommand(): Command {
  return new Command('healthcheck')
    .description(
      'ask the running agent whether it holds a valid SVID (exit 0) or not (exit 1); prints its state',
    )
    .option('--data-dir <dir>', `the agent's data directory (default ${AGENT_DEFAULTS.data_dir})`)
    .option('--live', 'only check that the agent runs')
    .action(async (flags: { dataDir?: string; live?: boolean }) => {
      const socket = healthSocketPath(flags.dataDir ?? AGENT_DEFAULTS.data_dir);
      try {
        const { status, body } = await queryHealth(socket, flags.live ? 'live' : 'ready');
        process.stdout.write(body);
        process.exitCode = status === 200 ? 0 : 1;
      } catch (error) {
        process.stderr.write(
          `ironroot-agent: no agent answers on ${socket} (${(error as Error).message}); is it running with this --data-dir?\n`,
        );
        process.exitCode = 1;
      }
    });
}
