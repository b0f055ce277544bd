import { Command } from 'commander';
import { JOIN_TOKEN_DEFAULT_TTL } from '../registration/service.js';
import { type AdminOptions, adminCommand, integerFlag, print, printJson, withClient } from './common.js';

interface TokenFlags extends AdminOptions {
  spiffeId?: string;
  ttl?: number;
}

/** `token generate`: a single-use join token; the server keeps only its hash. */
export function tokenCommand(): Command {
  const token = new Command('token').description('manage join tokens');
  adminCommand(
    token
      .command('generate')
      .description('generate a single-use join token for an agent')
      .option('--spiffe-id <id>', 'SPIFFE ID to give the agent that attests with the token')
      .option(
        '--ttl <seconds>',
        `how long the token stays valid (default ${JOIN_TOKEN_DEFAULT_TTL})`,
        integerFlag('--ttl'),
      ),
  ).action(async (flags: TokenFlags) => {
    const result = await withClient(flags, (c) =>
      c.call('AgentService', 'CreateJoinToken', { ttl: flags.ttl ?? 0, spiffe_id: flags.spiffeId ?? '' }),
    );
    if (flags.output === 'json') printJson({ value: result.value, expires_at: result.expires_at });
    else print(`Token: ${result.value}\nExpires at: ${new Date(result.expires_at * 1000).toISOString()}`);
  });
  return token;
}
