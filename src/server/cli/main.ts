import { Command } from 'commander';
import { VERSION } from '../../version.js';
import { hsmCommand } from './hsm.js';

export function buildServerProgram(): Command {
  const program = new Command('ironroot-server')
    .description('ironroot server: verifies TPM node attestation, holds the CA in an HSM, signs SVIDs')
    .version(VERSION, '-v, --version')
    .helpCommand(true)
    .showHelpAfterError();
  program.addCommand(hsmCommand());
  return program;
}

export async function main(argv: readonly string[]): Promise<void> {
  await buildServerProgram().parseAsync([...argv]);
}
