/**
 * What the admin commands share: finding the admin socket, the --output option, printing.
 *
 * @module
 */
import type { Command } from 'commander';
import { CliError, errorCodeOf, type OutputFormat, UNCODED_ERROR, withOutput } from '../../host/index.js';
import { SpiffeError, TrustDomain } from '../../spiffe/index.js';
import { AdminClient } from '../admin/client.js';
import { DEFAULTS } from '../config/defaults.js';
import { loadConfig } from '../config/load.js';

export { CliError, errorCodeOf, type OutputFormat, UNCODED_ERROR, withOutput };

export interface AdminOptions {
  adminSocket?: string;
  config?: string;
  output: OutputFormat;
}

/** Adds --admin-socket, --config and --output to an admin command. */
export function adminCommand(command: Command): Command {
  return withOutput(command)
    .option(
      '--admin-socket <path>',
      `admin API socket (default: admin_socket from --config, else ${DEFAULTS.admin_socket})`,
    )
    .option('-c, --config <file>', 'server config file to take admin_socket from');
}

export function adminSocketPath(options: AdminOptions): string {
  if (options.adminSocket !== undefined) return options.adminSocket;
  if (options.config !== undefined) return loadConfig({ file: options.config }).admin_socket;
  return DEFAULTS.admin_socket;
}

export async function withClient<T>(
  options: AdminOptions,
  use: (client: AdminClient) => Promise<T>,
): Promise<T> {
  const client = new AdminClient(adminSocketPath(options));
  try {
    return await use(client);
  } finally {
    client.close();
  }
}

export function print(text: string): void {
  process.stdout.write(text.endsWith('\n') ? text : `${text}\n`);
}

export function printJson(value: unknown): void {
  print(JSON.stringify(value, null, 2));
}

/** Parses a non-negative integer flag, naming the flag when it is not one. */
export function integerFlag(flag: string): (text: string) => number {
  return (text: string) => {
    if (!/^[0-9]+$/.test(text))
      throw new CliError(
        'ERR_CLI_USAGE',
        `${flag} ${JSON.stringify(text)}: allowed: a whole number of seconds`,
      );
    return Number(text);
  };
}

export function collect(value: string, previous: string[] | undefined): string[] {
  return [...(previous ?? []), value];
}

/** A trust domain flag that is neither `td` nor `spiffe://td`. */
export class TrustDomainFlagError extends CliError {
  override name = 'TrustDomainFlagError';

  constructor(message: string) {
    super('ERR_CLI_TRUST_DOMAIN', message);
  }
}

/**
 * The trust domain name in a flag given as `example.org` or, as SPIRE takes it, `spiffe://example.org`;
 * a SPIFFE ID with a path names a workload, not a trust domain, so it is refused.
 */
export function trustDomainFlag(flag: string, text: string): string {
  const refuse = (why: string) =>
    new TrustDomainFlagError(
      `${flag} ${JSON.stringify(text)}: ${why}; give the trust domain as example.org or spiffe://example.org`,
    );
  if (/^spiffe:\/\/[^/]+\/./.test(text)) throw refuse('a SPIFFE ID with a path is not a trust domain');
  try {
    return TrustDomain.parse(text).name;
  } catch (error) {
    if (error instanceof SpiffeError) throw refuse(`${error.code}: ${error.message}`);
    throw error;
  }
}
