/**
 * What the admin commands share: finding the admin socket, the --output option, printing.
 *
 * @module
 */
import { type Command, Option } from 'commander';
import { AdminClient } from '../admin/client.js';
import { DEFAULTS } from '../config/defaults.js';
import { loadConfig } from '../config/load.js';

export type OutputFormat = 'pretty' | 'json';

export interface AdminOptions {
  adminSocket?: string;
  config?: string;
  output: OutputFormat;
}

/** Adds --admin-socket, --config and --output to an admin command. */
export function adminCommand(command: Command): Command {
  return command
    .option(
      '--admin-socket <path>',
      `admin API socket (default: admin_socket from --config, else ${DEFAULTS.admin_socket})`,
    )
    .option('-c, --config <file>', 'server config file to take admin_socket from')
    .addOption(
      new Option('--output <format>', 'output format').choices(['pretty', 'json']).default('pretty'),
    );
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
      throw new Error(`${flag} ${JSON.stringify(text)}: allowed: a whole number of seconds`);
    return Number(text);
  };
}

export function collect(value: string, previous: string[] | undefined): string[] {
  return [...(previous ?? []), value];
}

/** An error the CLI reports as one line and exit status 1 (bin/ prints `ironroot-server: …`). */
export class CliError extends Error {
  override name = 'CliError';
}
