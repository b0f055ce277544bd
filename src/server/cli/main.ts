import { Command } from 'commander';
import { runCli } from '../../host/index.js';
import { VERSION } from '../../version.js';
import { agentCommand } from './agent.js';
import { bundleCommand, jwtCommand, localAuthorityCommand, x509Command } from './authority.js';
import { entryCommand } from './entry.js';
import { federationCommand } from './federation.js';
import { healthcheckCommand } from './healthcheck.js';
import { hsmCommand } from './hsm.js';
import { profileCommand } from './profile.js';
import { runCommand } from './run.js';
import { tokenCommand } from './token.js';
import { validateCommand } from './validate.js';

export function buildServerProgram(): Command {
  const program = new Command('ironroot-server')
    .description('ironroot server: verifies TPM node attestation, holds the CA in an HSM, signs SVIDs')
    .version(VERSION, '-v, --version')
    .helpCommand(true);
  program.addCommand(runCommand());
  program.addCommand(validateCommand());
  program.addCommand(healthcheckCommand());
  program.addCommand(entryCommand());
  program.addCommand(agentCommand());
  program.addCommand(tokenCommand());
  program.addCommand(localAuthorityCommand());
  program.addCommand(bundleCommand());
  program.addCommand(federationCommand());
  program.addCommand(x509Command());
  program.addCommand(jwtCommand());
  program.addCommand(hsmCommand());
  program.addCommand(profileCommand());
  return program;
}

export async function main(argv: readonly string[]): Promise<void> {
  await runCli(buildServerProgram(), argv);
}
