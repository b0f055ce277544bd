import { Command } from 'commander';
import { runCli } from '../../host/index.js';
import { VERSION } from '../../version.js';
import { apiCommand } from './api.js';
import { healthcheckCommand } from './healthcheck.js';
import { runCommand } from './run.js';
import { tpmCommand } from './tpm.js';
import { validateCommand } from './validate.js';

export function buildAgentProgram(): Command {
  const program = new Command('ironroot-agent')
    .description('ironroot agent: proves its node with the TPM and serves the SPIFFE Workload API')
    .version(VERSION, '-v, --version')
    .helpCommand(true);
  program.addCommand(runCommand());
  program.addCommand(validateCommand());
  program.addCommand(healthcheckCommand());
  program.addCommand(tpmCommand());
  program.addCommand(apiCommand());
  return program;
}

export async function main(argv: readonly string[]): Promise<void> {
  await runCli(buildAgentProgram(), argv);
}
