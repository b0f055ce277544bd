/**
 * Start-up refusals. A server that holds a CA must not run with a data directory or admin socket
 * directory that anyone can write to, nor with keys in memory or on disk unless the operator said
 * plainly that this is a development server.
 *
 * @module
 */
import { mkdirSync, statSync } from 'node:fs';
import { dirname } from 'node:path';
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
  if (devKeyManager) {
    warnings.push(
      `DEVELOPMENT MODE: CA and JWT keys are held by ${config.key_manager}, not an HSM; never use this server for real workloads`,
    );
  } else if (config.development) {
    warnings.push('DEVELOPMENT MODE is on (development: true); turn it off for production');
  }
  refuseWorldWritable('data_dir', config.data_dir);
  refuseWorldWritable('admin_socket directory', dirname(config.admin_socket));
  return { warnings };
}

/**
 * Creates the data dir (0700) and the admin socket's directory (0750: the group may reach the
 * socket, whose own mode 0770 decides the rest) when missing, then checks them again.
 */
export function prepareDirectories(config: ServerConfig): void {
  mkdirSync(config.data_dir, { recursive: true, mode: 0o700 });
  mkdirSync(dirname(config.admin_socket), { recursive: true, mode: 0o750 });
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
