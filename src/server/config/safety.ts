/**
 * Start-up refusals. A server that holds a CA must not run with a data directory or admin socket
 * directory that anyone can write to, nor with keys in memory or on disk unless the operator said
 * plainly that this is a development server.
 *
 * @module
 */
import { statSync } from 'node:fs';
import { dirname } from 'node:path';
import { ensureDir } from '../../host/index.js';
import { ConfigUnsafeError } from '../errors.js';
import type { ServerConfig } from './schema.js';

const WORLD_WRITABLE = 0o002;

export interface SafetyReport {
  /** Loud warnings the caller must log at start-up (development mode). */
  warnings: string[];
}

/** Checks what can be checked without creating anything; `validate` uses this alone. */
export function checkConfigSafety(config: ServerConfig): SafetyReport {
  const warnings: string[] = [];
  const devKeyManager = config.key_manager === 'memory:' || config.key_manager.startsWith('disk:');
  if (devKeyManager && !config.development) {
    throw new ConfigUnsafeError(
      `key_manager ${JSON.stringify(config.key_manager)} keeps CA keys outside an HSM; use a PKCS#11 URI, or set development: true (or --development) on a development server`,
    );
  }
  // Memory keys die with this process, while the shared journal outlives it: the next server to
  // open it would find the CA keys gone and drop them from every server's bundle.
  if (config.key_manager === 'memory:' && config.datastore.type === 'postgres')
    throw new ConfigUnsafeError(
      'key_manager "memory:" cannot serve a PostgreSQL datastore, which other servers share and which outlives this process; use the same PKCS#11 token on every server (or datastore: sqlite for a development server)',
    );
  if (devKeyManager) {
    warnings.push(
      `DEVELOPMENT MODE: CA and JWT keys are held by ${config.key_manager}, not an HSM; never use this server for real workloads`,
    );
  } else if (config.development) {
    warnings.push('DEVELOPMENT MODE is on (development: true); turn it off for production');
  }
  refuseWorldWritable('data_dir', config.data_dir);
  refuseWorldWritable('admin_socket directory', dirname(config.admin_socket));
  if (config.upstream_authority)
    refuseReadableKey('upstream_authority.key_file', config.upstream_authority.key_file);
  if (config.bundle_endpoint?.key_file)
    refuseReadableKey('bundle_endpoint.key_file', config.bundle_endpoint.key_file);
  if (config.oidc_discovery?.key_file)
    refuseReadableKey('oidc_discovery.key_file', config.oidc_discovery.key_file);
  if (config.datastore.type === 'postgres' && config.datastore.connection_string_file)
    refuseReadableKey('datastore.connection_string_file', config.datastore.connection_string_file);
  warnings.push(...svidTtlWarnings(config));
  return { warnings };
}

/**
 * A new CA is activated when a sixth of the old one's lifetime (at most 7 days) is left; an SVID
 * signed just before that cannot outlive its CA, so a longer TTL is silently cut short.
 */
export function svidTtlWarnings(config: ServerConfig): string[] {
  const window = Math.min(Math.floor(config.ca_ttl / 6), 7 * 86400);
  const warnings: string[] = [];
  for (const [key, ttl] of [
    ['default_x509_svid_ttl', config.default_x509_svid_ttl],
    ['default_jwt_svid_ttl', config.default_jwt_svid_ttl],
  ] as const) {
    if (ttl > window) {
      warnings.push(
        `${key} (${ttl}s) is longer than the ${window}s a CA of ca_ttl ${config.ca_ttl}s has left when its successor takes over; SVIDs will be cut to the CA's expiry. Raise ca_ttl to at least ${ttl * 6}s or lower ${key}`,
      );
    }
  }
  return warnings;
}

function refuseReadableKey(what: string, path: string): void {
  let mode: number;
  try {
    mode = statSync(path).mode;
  } catch (error) {
    throw new ConfigUnsafeError(`${what} ${path} cannot be read: ${(error as Error).message}`);
  }
  if ((mode & 0o077) !== 0) {
    throw new ConfigUnsafeError(
      `${what} ${path} is readable by others (mode ${(mode & 0o777).toString(8)}); run chmod 600 ${path}`,
    );
  }
}

/**
 * Creates the data dir (0700) and the admin socket's directory (0750: the group may reach the
 * socket, whose own mode 0770 decides the rest) when missing, then checks them again. The admin
 * socket has a directory of its own (`/run/ironroot-server`), apart from the agent's public
 * Workload API directory, which every workload must be able to reach.
 */
export function prepareDirectories(config: ServerConfig): void {
  ensureDir(config.data_dir, 0o700, 'data_dir');
  ensureDir(dirname(config.admin_socket), 0o750, 'admin_socket');
  refuseWorldWritable('data_dir', config.data_dir);
  refuseWorldWritable('admin_socket directory', dirname(config.admin_socket));
}

function refuseWorldWritable(what: string, path: string): void {
  let mode: number;
  try {
    mode = statSync(path).mode;
  } catch {
    return; // Missing: prepareDirectories creates it with a safe mode.
  }
  if ((mode & WORLD_WRITABLE) !== 0) {
    throw new ConfigUnsafeError(
      `${what} ${path} is world-writable (mode ${(mode & 0o7777).toString(8)}); run chmod o-w ${path} or choose another directory`,
    );
  }
}
