import { Command } from 'commander';
import { systemClock } from '../clock.js';
import { DEFAULTS } from '../config/defaults.js';
import { type ConfigOverrides, loadConfig } from '../config/load.js';

interface RunFlags {
  config?: string;
  trustDomain?: string;
  dataDir?: string;
  bindAddress?: string;
  adminSocket?: string;
  healthAddress?: string;
  keyManager?: string;
  development?: boolean;
  logLevel?: string;
  logFormat?: string;
  tpmEkCa?: string;
  tpmEkHashAllow?: string;
  tpmPcrs?: string;
}

/** `run`: start the server from a config file, flags, or both (flags win). Stops on SIGINT/SIGTERM. */
export function runCommand(): Command {
  return new Command('run')
    .description('run the server')
    .option('-c, --config <file>', 'server config file (YAML); optional when flags say enough')
    .option('--trust-domain <name>', 'trust domain, e.g. example.org')
    .option('--data-dir <dir>', `data directory (default ${DEFAULTS.data_dir})`)
    .option('--bind-address <host:port>', `agent API address (default ${DEFAULTS.bind_address})`)
    .option('--admin-socket <path>', `admin API socket (default ${DEFAULTS.admin_socket})`)
    .option(
      '--health-address <host:port>',
      `/live, /ready, /metrics address (default ${DEFAULTS.health_address})`,
    )
    .option('--key-manager <uri>', 'PKCS#11 URI, or disk:DIR / memory: (development only)')
    .option('--development', 'allow development-only settings, with loud warnings')
    .option('--log-level <level>', `trace|debug|info|warn|error|fatal (default ${DEFAULTS.log_level})`)
    .option('--log-format <format>', `json|pino (default ${DEFAULTS.log_format}; see docs/server-config.md)`)
    .option(
      '--tpm-ek-ca <dir>',
      'directory of trusted EK issuer CA certificates (PEM/DER); enables TPM attestation',
    )
    .option(
      '--tpm-ek-hash-allow <file>',
      'file of allowed EK public key hashes, one per line; enables TPM attestation',
    )
    .option('--tpm-pcrs <selection>', `PCRs to quote (default ${DEFAULTS.tpm_pcrs})`)
    .action(async (flags: RunFlags) => {
      const overrides: ConfigOverrides = {
        trust_domain: flags.trustDomain,
        data_dir: flags.dataDir,
        bind_address: flags.bindAddress,
        admin_socket: flags.adminSocket,
        health_address: flags.healthAddress,
        key_manager: flags.keyManager,
        development: flags.development,
        log_level: flags.logLevel,
        log_format: flags.logFormat,
        tpm_attestation: {
          ek_ca_dir: flags.tpmEkCa,
          ek_hash_allow_file: flags.tpmEkHashAllow,
          pcrs: flags.tpmPcrs,
        },
      };
      const config = loadConfig({ ...(flags.config !== undefined ? { file: flags.config } : {}), overrides });
      // Loaded here, not at the top: admin commands share this executable and should not pay for
      // fastify, Kysely and SQLite at every start.
      const { createServerLogger } = await import('../log.js');
      const { startServer } = await import('../server.js');
      const logger = createServerLogger(config);
      const server = await startServer(config, logger, { clock: systemClock });
      await new Promise<void>((resolve) => {
        const stop = (signal: string) => {
          logger.info({ signal }, 'stopping');
          resolve();
        };
        process.once('SIGINT', () => stop('SIGINT'));
        process.once('SIGTERM', () => stop('SIGTERM'));
      });
      await server.stop();
    });
}
