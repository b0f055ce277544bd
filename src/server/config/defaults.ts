/**
 * Every default of the server configuration, in one place. The schema, the docs and `run`'s
 * flag help all read from here.
 *
 * @module
 */
export const DEFAULTS = {
  data_dir: '/var/lib/ironroot',
  bind_address: '0.0.0.0:8081',
  admin_socket: '/run/ironroot-server/admin.sock',
  admin_allowed_uids: [0],
  key_manager: 'pkcs11:token=ironroot',
  development: false,
  log_level: 'info',
  log_format: 'json',
  health_address: '127.0.0.1:8080',
  datastore: 'sqlite',
  postgres_max_connections: 10,
  ca_ttl: '24h',
  ca_key_type: 'ec-p256',
  default_x509_svid_ttl: '1h',
  default_jwt_svid_ttl: '5m',
  bundle_endpoint_profile: 'https_web',
  bundle_refresh_hint: '5m',
  agent_svid_ttl: '1h',
  tpm_pcrs: 'sha256:0-7',
  tpm_nonce_ttl: '60s',
  tpm_reattest_interval: '60s',
  attestation_rate_per_second: 5,
  attestation_rate_burst: 10,
} as const;

/** Re-quotes (continuous attestation) cannot be asked for more often than this, in seconds. */
export const REATTEST_INTERVAL_MIN_SECONDS = 2;

/** Bounds for entry TTLs (seconds); 0 in an entry means "use the server default". */
export const SVID_TTL_MAX_SECONDS = 30 * 24 * 3600;
