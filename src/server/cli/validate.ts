import { Command, Option } from 'commander';
import { loadConfig } from '../config/load.js';
import { checkConfigSafety } from '../config/safety.js';
import { loadTpmPolicy } from '../nodeattestor/policy.js';
import { print, printJson } from './common.js';

/** `validate --config FILE`: the start-up checks of `run`, without starting anything. */
export function validateCommand(): Command {
  return new Command('validate')
    .description(
      "check a config file (schema, safety, the data dir's trust domain) without starting the server",
    )
    .requiredOption('-c, --config <file>', 'server config file (YAML)')
    .addOption(new Option('--output <format>', 'output format').choices(['pretty', 'json']).default('pretty'))
    .action(async (flags: { config: string; output: 'pretty' | 'json' }) => {
      const config = loadConfig({ file: flags.config });
      const { warnings } = checkConfigSafety(config);
      // The EK CAs and firmware profiles `run` would load, with the same errors.
      if (config.tpm_attestation) loadTpmPolicy(config.tpm_attestation);
      // An existing data dir must belong to the configured trust domain, as `run` requires. Loaded
      // here: the other commands of this executable should not pay for SQLite.
      const { checkDataDirTrustDomain } = await import('../datastore/trust-domain.js');
      checkDataDirTrustDomain(config.data_dir, config.trust_domain);
      if (flags.output === 'json') printJson({ valid: true, warnings });
      else {
        for (const warning of warnings) print(`warning: ${warning}`);
        print(`${flags.config}: configuration is valid`);
      }
    });
}
