/**
 * Every check `run` makes before it creates, locks or binds anything, in one place, so that
 * `validate` runs exactly these and cannot pass a configuration that `run` refuses.
 *
 * @module
 */
import { dirname } from 'node:path';
import { checkDirUnlocked, checkDirUsable, checkSocketPath, type LockOptions } from '../host/index.js';
import type { UpstreamAuthority } from './ca/authority.js';
import { loadUpstreamAuthority } from './ca/upstream.js';
import { checkConfigSafety } from './config/safety.js';
import type { ServerConfig } from './config/schema.js';
import { loadTpmPolicy, type TpmPolicy } from './nodeattestor/policy.js';

/** The lock one server holds on its data directory for as long as it runs. */
export const DATA_DIR_LOCK: LockOptions = { key: 'data_dir', owner: 'ironroot-server' };

export interface Preflight {
  /** Loud warnings to log (development mode, SVID TTLs cut short). */
  warnings: string[];
  tpmPolicy: TpmPolicy | undefined;
  upstream: UpstreamAuthority | undefined;
}

export async function preflight(config: ServerConfig): Promise<Preflight> {
  const { warnings } = checkConfigSafety(config);
  // Firmware profiles, EK CAs and the upstream CA are read before anything is created, so a bad
  // policy costs nothing.
  const tpmPolicy = config.tpm_attestation ? loadTpmPolicy(config.tpm_attestation) : undefined;
  const upstream = config.upstream_authority
    ? loadUpstreamAuthority(config.upstream_authority.cert_file, config.upstream_authority.key_file)
    : undefined;
  checkDirUsable(config.data_dir, 'data_dir');
  checkDirUsable(dirname(config.admin_socket), 'admin_socket');
  // An existing datastore must belong to the configured trust domain (PostgreSQL: and be reachable).
  // Loaded here, not at the top: the executable's other commands should not pay for SQLite or pg.
  const { checkDatastoreTrustDomain } = await import('./datastore/trust-domain.js');
  await checkDatastoreTrustDomain(config);
  checkDirUnlocked(config.data_dir, DATA_DIR_LOCK);
  await checkSocketPath(config.admin_socket, 'admin_socket');
  return { warnings, tpmPolicy, upstream };
}
