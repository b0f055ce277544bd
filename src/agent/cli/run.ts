import { Command } from 'commander';
import { AGENT_DEFAULTS } from '../config/defaults.js';

interface RunFlags {
  config?: string;
  serverAddress?: string[];
  trustDomain?: string;
  trustBundle?: string;
  trustBundleUrl?: string;
  trustBundleFormat?: string;
  tcti?: string;
  dataDir?: string;
  socketPath?: string;
  syncInterval?: string;
  joinToken?: string;
  joinTokenFile?: string;
  insecureBootstrap?: boolean;
  ek?: string;
  logLevel?: string;
  metricsAddress?: string;
  logFormat?: string;
}

/**
 * `run`: attest, keep the agent SVID renewed, sync entries and workload SVIDs, serve the Workload
 * API and health; stops on SIGINT/SIGTERM.
 */
export function runCommand(): Command {
  return new Command('run')
    .description(
      'run the agent: attest the node, keep its SVID renewed, serve workload SVIDs on the Workload API',
    )
    .option('-c, --config <file>', 'agent config file (YAML); optional when flags say enough')
    .option(
      '--server-address <host:port>',
      'ironroot-server agent API address; repeat it for several servers (server_addresses), tried in order',
      (value: string, previous: string[] | undefined) => [...(previous ?? []), value],
    )
    .option('--trust-domain <name>', 'trust domain, e.g. example.org')
    .option(
      '--trust-bundle <file>',
      "PEM bootstrap bundle: the server's CA roots (ironroot-server bundle show)",
    )
    .option(
      '--trust-bundle-url <url>',
      'https:// URL to fetch the bootstrap bundle from (verified with the system CAs), instead of --trust-bundle',
    )
    .option('--trust-bundle-format <format>', 'format of the bootstrap bundle: pem|spiffe (default pem)')
    .option('--insecure-bootstrap', 'do not authenticate the server at first attestation (labs only)')
    .option('--tcti <string>', `TPM TCTI (default ${AGENT_DEFAULTS.tcti})`)
    .option('--ek <kind>', `EK to attest with: auto|rsa2048|ecc-p384-high|… (default ${AGENT_DEFAULTS.ek})`)
    .option('--data-dir <dir>', `data directory (default ${AGENT_DEFAULTS.data_dir})`)
    .option(
      '--socket-path <path>',
      `Workload API socket, created 0777 in a 0755 directory (default ${AGENT_DEFAULTS.socket_path})`,
    )
    .option(
      '--sync-interval <duration>',
      `how often entries and SVIDs are synced with the server (default ${AGENT_DEFAULTS.sync_interval})`,
    )
    .option(
      '--join-token-file <file>',
      'attest with the single-use join token in this file (0600, owned by the agent user) instead of the TPM',
    )
    .option(
      '--join-token <token>',
      'attest with this join token instead of the TPM; every user can read it in the process list: prefer --join-token-file',
    )
    .option('--metrics-address <host:port>', 'serve Prometheus /metrics over plain HTTP here (default: off)')
    .option('--log-level <level>', `trace|debug|info|warn|error|fatal (default ${AGENT_DEFAULTS.log_level})`)
    .option(
      '--log-format <format>',
      `json|pino (default ${AGENT_DEFAULTS.log_format}; see docs/agent-config.md)`,
    )
    .action(async (flags: RunFlags) => {
      // In a worker: the schema's modules are needed only now (load-apart.ts).
      const { loadAgentConfigApart } = await import('../config/load-apart.js');
      const config = await loadAgentConfigApart({
        ...(flags.config !== undefined ? { file: flags.config } : {}),
        overrides: {
          server_address: flags.serverAddress?.length === 1 ? flags.serverAddress[0] : undefined,
          server_addresses:
            flags.serverAddress !== undefined && flags.serverAddress.length > 1
              ? flags.serverAddress
              : undefined,
          trust_domain: flags.trustDomain,
          trust_bundle: flags.trustBundle,
          trust_bundle_url: flags.trustBundleUrl,
          trust_bundle_format: flags.trustBundleFormat,
          insecure_bootstrap: flags.insecureBootstrap,
          tcti: flags.tcti,
          ek: flags.ek,
          data_dir: flags.dataDir,
          socket_path: flags.socketPath,
          sync_interval: flags.syncInterval,
          join_token: flags.joinToken,
          join_token_file: flags.joinTokenFile,
          // A join token (or its file) on the command line means join-token attestation.
          attestation:
            flags.joinToken !== undefined || flags.joinTokenFile !== undefined ? 'join_token' : undefined,
          log_level: flags.logLevel,
          metrics_address: flags.metricsAddress,
          log_format: flags.logFormat,
        },
      });
      // Everything validate checks, before anything is created, locked or bound.
      const { preflight } = await import('../preflight.js');
      const { warnings } = await preflight(config);
      const { createAgentLogger } = await import('../log.js');
      const logger = createAgentLogger(config);
      for (const warning of warnings) logger.warn(warning);
      if (flags.joinToken !== undefined)
        logger.warn(
          { flag: '--join-token' },
          'the join token on the command line is readable by every user of this host (/proc/<pid>/cmdline); use --join-token-file (mode 0600) instead',
        );
      const { Agent } = await import('../agent.js');
      const agent = new Agent(config, logger);
      await agent.start();
      logger.info(
        {
          server_address: config.server_address,
          server_addresses: config.server_addresses,
          trust_domain: config.trust_domain,
          data_dir: config.data_dir,
        },
        'ironroot-agent started',
      );
      await new Promise<void>((resolve) => {
        const stop = (signal: string) => {
          logger.info({ signal }, 'stopping');
          resolve();
        };
        process.once('SIGINT', () => stop('SIGINT'));
        process.once('SIGTERM', () => stop('SIGTERM'));
      });
      await agent.stop();
      logger.info('ironroot-agent stopped');
    });
}
