/**
 * The agent's configuration defaults and what the running agent reads from a loaded configuration,
 * apart from the schema: the schema needs zod, which `run` loads only in a short-lived worker
 * (load-apart.ts), so modules that stay loaded import these from here.
 *
 * @module
 */
import type { AgentConfig } from './schema.js';

export const AGENT_DEFAULTS = {
  data_dir: '/var/lib/ironroot-agent',
  socket_path: '/run/ironroot-agent/public/api.sock',
  attestation: 'tpm',
  tcti: 'device:/dev/tpmrm0',
  ek: 'auto',
  event_log_path: '/sys/kernel/security/tpm0/binary_bios_measurements',
  log_level: 'info',
  log_format: 'json',
  retry_initial: '1s',
  retry_max: '5m',
  sync_interval: '5s',
  trust_bundle_format: 'pem',
} as const;

/** The configured servers in order: `server_address` alone, or `server_addresses`. */
export function serverAddresses(config: Pick<AgentConfig, 'server_address' | 'server_addresses'>): string[] {
  return config.server_addresses ?? (config.server_address === undefined ? [] : [config.server_address]);
}
