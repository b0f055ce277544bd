import { Command } from 'commander';
import {
  type AdminOptions,
  adminCommand,
  CliError,
  errorCodeOf,
  print,
  printJson,
  UNCODED_ERROR,
  withClient,
} from './common.js';

/**
 * `healthcheck`: asks the server over its admin socket for something that needs the datastore,
 * so "healthy" means the API answers and the store does too.
 */
export function healthcheckCommand(): Command {
  return adminCommand(
    new Command('healthcheck')
      .description('check that the server answers on its admin socket')
      .option('--verbose', 'say what was checked'),
  ).action(async (flags: AdminOptions & { verbose?: boolean }) => {
    try {
      const { count } = await withClient(flags, (c) => c.call('EntryService', 'CountEntries', {}));
      if (flags.output === 'json') printJson({ healthy: true, entries: count });
      else
        print(
          flags.verbose
            ? `Server is healthy (admin API and datastore answer; ${count} entries).`
            : 'Server is healthy.',
        );
    } catch (error) {
      if (flags.output === 'json') printJson({ healthy: false, reason: (error as Error).message });
      throw new CliError(
        errorCodeOf(error) ?? UNCODED_ERROR,
        `Server is unhealthy: ${(error as Error).message}`,
      );
    }
  });
}
