/**
 * Every check `ironroot-agent run` makes before it creates, locks or binds anything, so that
 * `ironroot-agent validate` runs exactly these: the bootstrap bundle, the data directory (usable,
 * private, not locked by another agent), and the Workload API socket (no live server on it, its
 * directory reachable by workloads).
 *
 * @module
 */
import type { X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { dirname } from 'node:path';
import {
  checkDirUnlocked,
  checkDirUsable,
  checkSocketPath,
  closedToOthers,
  type LockOptions,
} from '../host/index.js';
import { type BundleFormat, parseBootstrapBundle } from './bundle-url.js';
import type { AgentConfig } from './config/schema.js';
import { AgentError } from './errors.js';
import { checkPrivateDir } from './store.js';

/** The lock one agent holds on its data directory for as long as it runs. */
export const DATA_DIR_LOCK: LockOptions = { key: 'data_dir', owner: 'ironroot-agent' };

export async function preflight(config: AgentConfig): Promise<{ warnings: string[] }> {
  const warnings: string[] = [];
  if (config.trust_bundle !== undefined)
    readTrustBundle(config.trust_bundle, config.trust_domain, config.trust_bundle_format);
  checkDirUsable(config.data_dir, 'data_dir');
  checkPrivateDir(config.data_dir);
  checkDirUnlocked(config.data_dir, DATA_DIR_LOCK);
  checkDirUsable(dirname(config.socket_path), 'socket_path');
  await checkSocketPath(config.socket_path, 'socket_path');
  const closed = closedToOthers(config.socket_path);
  if (closed !== undefined)
    warnings.push(
      `socket_path ${config.socket_path}: directory ${closed} is closed to other users (no o+x), so workloads running as other users cannot connect; chmod o+x ${closed} or choose a socket_path under a public directory such as /run/ironroot-agent/public`,
    );
  return { warnings };
}

/**
 * The bootstrap bundle's CA certificates, in `format` (trust_bundle_format), refused by key when
 * unreadable or holding no CA certificate.
 */
export function readTrustBundle(file: string, trustDomain: string, format: BundleFormat): X509Certificate[] {
  const fix = `write the server's bundle there (ironroot-server bundle show --format ${format})`;
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (cause) {
    throw new AgentError(
      'ERR_AGENT_CONFIG_FILE',
      `trust_bundle ${file} cannot be read (${(cause as Error).message}); ${fix}`,
      { cause },
    );
  }
  let authorities: X509Certificate[];
  try {
    authorities = parseBootstrapBundle(text, format, trustDomain);
  } catch (cause) {
    throw new AgentError(
      'ERR_AGENT_CONFIG_FILE',
      `trust_bundle ${file} is not a ${format === 'pem' ? 'PEM' : 'SPIFFE'} bundle (${(cause as Error).message}); ${fix}, or set trust_bundle_format to its format`,
      { cause },
    );
  }
  if (authorities.length === 0)
    throw new AgentError('ERR_AGENT_CONFIG_FILE', `trust_bundle ${file} holds no certificate; ${fix}`);
  return authorities;
}
