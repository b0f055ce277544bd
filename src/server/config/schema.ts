/**
 * The server configuration schema. Keys are snake_case, like SPIRE's; durations are strings such as
 * `24h`, converted to seconds here so nothing downstream parses them again.
 *
 * @module
 */
import { z } from 'zod';
import { LOG_FORMATS, LOG_LEVELS } from '../../host/index.js';
import { DEFAULTS, REATTEST_INTERVAL_MIN_SECONDS } from './defaults.js';
import { DURATION_HINT, parseDuration } from './duration.js';

const TRUST_DOMAIN = /^[a-z0-9._-]{1,255}$/;
const HOST_PORT = /^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):([0-9]{1,5})$/;

/** A duration such as `90s`, `5m` or `1h` in seconds; an issue naming what is allowed otherwise. */
function toSeconds(text: string, ctx: z.RefinementCtx): number {
  const seconds = parseDuration(text);
  if (seconds !== undefined) return seconds;
  ctx.addIssue({ code: 'custom', message: `allowed: ${DURATION_HINT}`, input: text });
  return z.NEVER;
}

const duration = (defaultValue: string) =>
  z.string(`allowed: ${DURATION_HINT}`).default(defaultValue).transform(toSeconds);

/** A duration that may be left out (undefined then). */
const optionalDuration = () =>
  z
    .string(`allowed: ${DURATION_HINT}`)
    .optional()
    .transform((text, ctx) => (text === undefined ? undefined : toSeconds(text, ctx)));

const hostPort = (defaultValue: string) =>
  z
    .string()
    .default(defaultValue)
    .refine((text) => {
      const port = HOST_PORT.exec(text)?.[2];
      return port !== undefined && Number(port) <= 65535;
    }, 'allowed: host:port, e.g. 127.0.0.1:8080 or [::1]:8080, port 0..65535');

const absolutePath = (defaultValue: string) =>
  z
    .string()
    .default(defaultValue)
    .refine((text) => text.startsWith('/'), 'allowed: an absolute path');

const filePath = z.string().refine((text) => text.startsWith('/'), 'allowed: an absolute path');

const httpsUrl = z
  .string()
  .refine((text) => URL.canParse(text) && new URL(text).protocol === 'https:', 'allowed: an https:// URL');

const upstreamAuthority = z.strictObject({
  cert_file: filePath,
  key_file: filePath,
});

const bundleEndpoint = z
  .strictObject({
    address: hostPort('0.0.0.0:8443'),
    profile: z.enum(['https_web', 'https_spiffe']).default(DEFAULTS.bundle_endpoint_profile),
    cert_file: filePath.optional(),
    key_file: filePath.optional(),
    refresh_hint: duration(DEFAULTS.bundle_refresh_hint),
  })
  .refine((b) => b.profile === 'https_spiffe' || (b.cert_file !== undefined && b.key_file !== undefined), {
    message: 'allowed: profile https_web needs cert_file and key_file (the serving certificate)',
    path: ['cert_file'],
  });

const oidcDiscovery = z.strictObject({
  address: hostPort('127.0.0.1:8444'),
  cert_file: filePath.optional(),
  key_file: filePath.optional(),
});

/** `sha256:0-7`, `sha256:0,2,4-7`, several banks joined by `+`. */
const PCR_SELECTION =
  /^(sha1|sha256|sha384|sha512):(\d{1,2}(-\d{1,2})?)(,\d{1,2}(-\d{1,2})?)*(\+(sha1|sha256|sha384|sha512):(\d{1,2}(-\d{1,2})?)(,\d{1,2}(-\d{1,2})?)*)*$/;
const HEX_DIGEST = /^[0-9a-f]{40,128}$/;

const profileName = z
  .string()
  .regex(/^[a-z0-9][a-z0-9._-]{0,62}$/, 'allowed: a firmware profile name (its file name without .yaml)');

/** Which profiles a node must fit; the first rule whose match holds decides, else `profiles`. */
const measuredBoot = z.union(
  [
    z.literal('none'),
    z.strictObject({
      profiles_dir: filePath,
      profiles: z.array(profileName).min(1),
      rules: z
        .array(
          z
            .strictObject({
              ek_ca: z.string().min(1).optional(),
              ek_hash: z
                .string()
                .regex(/^[0-9a-f]{64}$/, 'allowed: lowercase hex SHA-256 of the EK public key')
                .optional(),
              selector: z
                .string()
                .regex(/^tpm:[a-z-]+:.+$/, 'allowed: a node selector such as tpm:manufacturer:id:00001014')
                .optional(),
              profiles: z.array(profileName).min(1),
            })
            .refine(
              (r) => [r.ek_ca, r.ek_hash, r.selector].filter((v) => v !== undefined).length === 1,
              'allowed: exactly one of ek_ca (EK certificate issuer), ek_hash, selector',
            ),
        )
        .default([]),
    }),
  ],
  {
    error:
      'allowed: none (no measured-boot policy: say so explicitly), or a mapping with profiles_dir, profiles and optional rules',
  },
);

const tpmAttestation = z
  .strictObject({
    ek_ca_dir: filePath.optional(),
    ek_hash_allow_file: filePath.optional(),
    ek_hashes: z
      .array(z.string().regex(/^[0-9a-f]{64}$/, 'allowed: lowercase hex SHA-256 of the EK public key'))
      .default([]),
    ek_trust: z.enum(['any']).optional(),
    pcrs: z
      .string()
      .default(DEFAULTS.tpm_pcrs)
      .refine((text) => PCR_SELECTION.test(text), 'allowed: bank:pcrs, e.g. sha256:0-7 or sha256:0,2,4-7'),
    pcr_values: z
      .record(
        z.string().regex(/^\d{1,2}$/, 'allowed: a PCR number 0..23'),
        z.array(z.string().regex(HEX_DIGEST, 'allowed: lowercase hex digests')).min(1),
      )
      .default({}),
    require_event_log: z.boolean().default(false),
    nonce_ttl: duration(DEFAULTS.tpm_nonce_ttl),
    measured_boot: measuredBoot,
    reattest_interval: duration(DEFAULTS.tpm_reattest_interval).refine(
      (seconds) => seconds >= REATTEST_INTERVAL_MIN_SECONDS,
      `allowed: ${DURATION_HINT}, at least ${REATTEST_INTERVAL_MIN_SECONDS}s`,
    ),
    /** Defaults to reattest_interval. */
    reattest_deadline: optionalDuration(),
  })
  .refine(
    (t) =>
      t.ek_trust === 'any' ||
      t.ek_ca_dir !== undefined ||
      t.ek_hash_allow_file !== undefined ||
      t.ek_hashes.length > 0,
    {
      message:
        'allowed: at least one of ek_ca_dir, ek_hash_allow_file, ek_hashes; or ek_trust: any to accept every EK (labs only)',
      path: ['ek_trust'],
    },
  );

/** Connection-string parameters the `tls` mapping decides; one in the string would override it. */
export const TLS_URI_PARAMS = ['sslmode', 'ssl', 'sslcert', 'sslkey', 'sslrootcert', 'sslcrl'] as const;

const postgresDatastore = z
  .strictObject({
    type: z.literal('postgres'),
    connection_string: z
      .string()
      .refine(
        (text) => /^postgres(ql)?:\/\//.test(text),
        'allowed: a postgresql:// URI, e.g. postgresql://ironroot@db.example.org/ironroot',
      )
      .optional(),
    connection_string_file: filePath.optional(),
    pool: z
      .strictObject({
        max_connections: z.number().int().min(1).max(1000).default(DEFAULTS.postgres_max_connections),
        /** How long an unused connection stays open; pg's own default (10s) when unset. */
        idle_timeout: optionalDuration(),
      })
      .default({ max_connections: DEFAULTS.postgres_max_connections, idle_timeout: undefined }),
    tls: z
      .strictObject(
        {
          mode: z.enum(['disable', 'require', 'verify-full']),
          ca_file: filePath.optional(),
        },
        'allowed: a mapping with mode (disable, require or verify-full) and optional ca_file',
      )
      .refine((t) => t.ca_file === undefined || t.mode === 'verify-full', {
        message: 'allowed: ca_file only with mode verify-full (the CA that signed the server certificate)',
        path: ['ca_file'],
      }),
  })
  .refine((d) => (d.connection_string === undefined) !== (d.connection_string_file === undefined), {
    message:
      'allowed: exactly one of connection_string and connection_string_file (an absolute path to a 0600 file holding the URI)',
    path: ['connection_string'],
  })
  .refine(
    (d) =>
      d.connection_string === undefined ||
      !TLS_URI_PARAMS.some((p) => new URLSearchParams(d.connection_string?.split('?')[1]).has(p)),
    {
      message: `allowed: a URI without ${TLS_URI_PARAMS.join(', ')} parameters; say it under datastore.tls`,
      path: ['connection_string'],
    },
  );

/**
 * `sqlite` (the old spelling, still accepted), `{ type: sqlite }`, or `{ type: postgres, … }`.
 * Normalised to an object so that code reads `datastore.type`.
 */
const datastore = z
  .preprocess(
    (value) => (value === 'sqlite' ? { type: 'sqlite' } : value),
    z.discriminatedUnion('type', [z.strictObject({ type: z.literal('sqlite') }), postgresDatastore], {
      error:
        'allowed: sqlite, { type: sqlite }, or { type: postgres, connection_string or connection_string_file, tls: { mode } }',
    }),
  )
  .default({ type: DEFAULTS.datastore });

const rateLimit = z.strictObject({
  per_second: z.number().positive().max(10_000).default(DEFAULTS.attestation_rate_per_second),
  burst: z.number().int().min(1).max(10_000).default(DEFAULTS.attestation_rate_burst),
});

export const configSchema = z
  .strictObject({
    trust_domain: z
      .string('allowed: a trust domain name such as example.org')
      .regex(TRUST_DOMAIN, 'allowed: lowercase letters, digits, ".", "-" and "_" (e.g. example.org)'),
    data_dir: absolutePath(DEFAULTS.data_dir),
    bind_address: hostPort(DEFAULTS.bind_address),
    admin_socket: absolutePath(DEFAULTS.admin_socket),
    admin_allowed_uids: z
      .array(z.number().int().min(0).max(4294967294), 'allowed: a list of numeric uids, e.g. [0, 1000]')
      .default([...DEFAULTS.admin_allowed_uids]),
    key_manager: z
      .string()
      .default(DEFAULTS.key_manager)
      .refine(
        (text) => text.startsWith('pkcs11:') || text === 'memory:' || /^disk:\/.+/.test(text),
        'allowed: a PKCS#11 URI (pkcs11:token=…), disk:/absolute/dir or memory:',
      ),
    development: z.boolean().default(DEFAULTS.development),
    log_level: z.enum(LOG_LEVELS).default(DEFAULTS.log_level),
    /** json: ISO time and level names; pino: epoch-millisecond time and level numbers. */
    log_format: z.enum(LOG_FORMATS).default(DEFAULTS.log_format),
    health_address: hostPort(DEFAULTS.health_address),
    datastore,
    ca_ttl: duration(DEFAULTS.ca_ttl),
    ca_key_type: z
      .enum(['ec-p256', 'ec-p384', 'rsa-2048', 'rsa-3072', 'rsa-4096'])
      .default(DEFAULTS.ca_key_type),
    default_x509_svid_ttl: duration(DEFAULTS.default_x509_svid_ttl),
    default_jwt_svid_ttl: duration(DEFAULTS.default_jwt_svid_ttl),
    ca_subject: z.string().min(1).optional(),
    upstream_authority: upstreamAuthority.optional(),
    jwt_issuer: httpsUrl.optional(),
    bundle_endpoint: bundleEndpoint.optional(),
    oidc_discovery: oidcDiscovery.optional(),
    agent_svid_ttl: duration(DEFAULTS.agent_svid_ttl),
    tpm_attestation: tpmAttestation.optional(),
    attestation_rate_limit: rateLimit.default({
      per_second: DEFAULTS.attestation_rate_per_second,
      burst: DEFAULTS.attestation_rate_burst,
    }),
  })
  .refine((c) => c.oidc_discovery === undefined || c.jwt_issuer !== undefined, {
    message:
      'allowed: oidc_discovery needs jwt_issuer (the https:// issuer URL the discovery document names)',
    path: ['jwt_issuer'],
  });

/** The configuration after validation and defaults: durations are seconds. */
export type ServerConfig = z.output<typeof configSchema>;
/** What a YAML file (or flags) may say. */
export type ServerConfigInput = z.input<typeof configSchema>;
