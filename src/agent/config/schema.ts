/**
 * The agent configuration schema (YAML keys in snake_case, like the server's). Durations are
 * strings such as `30s`, turned into seconds here.
 *
 * @module
 */
import { z } from 'zod';
import { LOG_FORMATS, LOG_LEVELS } from '../../host/index.js';
import { AGENT_DEFAULTS } from './defaults.js';

const HOST_PORT = /^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):([0-9]{1,5})$/;
const TRUST_DOMAIN = /^[a-z0-9._-]{1,255}$/;
const DURATION = /^([0-9]+)(ms|s|m|h)$/;
const UNIT: Record<string, number> = { ms: 0.001, s: 1, m: 60, h: 3600 };

function isHttpsUrl(text: string): boolean {
  try {
    const url = new URL(text);
    // Credentials in the URL would end up in logs, which name the URL.
    return url.protocol === 'https:' && url.hostname !== '' && url.username === '' && url.password === '';
  } catch {
    return false;
  }
}

const duration = (defaultValue: string) =>
  z
    .string()
    .default(defaultValue)
    .transform((text, ctx) => {
      const match = DURATION.exec(text);
      const unit = match?.[2];
      if (match === null || unit === undefined) {
        ctx.addIssue({
          code: 'custom',
          message: 'allowed: a duration such as 500ms, 30s, 5m, 1h',
          input: text,
        });
        return z.NEVER;
      }
      return Number(match[1]) * (UNIT[unit] ?? 1);
    });

const absolutePath = z.string().refine((text) => text.startsWith('/'), 'allowed: an absolute path');

/** `unix:` with nothing after it (YAML null) turns an attestor on just as `unix: {}` does. */
const noOptions = z.strictObject({}).nullable().optional();

const workloadAttestors = z
  .strictObject({
    unix: noOptions,
    systemd: noOptions,
    k8s: z
      .strictObject({
        kubelet_url: z
          .string()
          .regex(/^https:\/\/[^/\s]+(\/.*)?$/, 'allowed: the kubelet URL, e.g. https://127.0.0.1:10250')
          .optional(),
        ca_file: absolutePath.optional(),
        skip_verify: z.boolean().optional(),
        token_file: absolutePath.optional(),
      })
      .refine((k) => !(k.ca_file !== undefined && k.skip_verify === true), {
        message: 'allowed: ca_file or skip_verify: true, not both',
      })
      .nullable()
      // K8sAttestor cannot talk to the kubelet without one of them; say so here, by key.
      .refine((k) => k !== null && (k.ca_file !== undefined || k.skip_verify === true), {
        message: 'allowed: ca_file (the kubelet’s CA) or skip_verify: true',
      })
      .optional(),
  })
  .default({ unix: {} });

const SERVER_ADDRESS_ALLOWED = 'allowed: host:port, e.g. server.example.org:8081 or [::1]:8081';

function isServerAddress(text: string): boolean {
  const port = HOST_PORT.exec(text)?.[2];
  return port !== undefined && Number(port) > 0 && Number(port) <= 65535;
}

export const agentConfigSchema = z
  .strictObject({
    /** One server: `host:port`, a host name standing for every address it resolves to. */
    server_address: z
      .string(
        'allowed: host:port of ironroot-server, e.g. server.example.org:8081 (for several servers: server_addresses, a list)',
      )
      .refine(isServerAddress, SERVER_ADDRESS_ALLOWED)
      .optional(),
    /** Several servers sharing one datastore, tried in order; see servers.ts. */
    server_addresses: z
      .array(
        z.string(SERVER_ADDRESS_ALLOWED).refine(isServerAddress, SERVER_ADDRESS_ALLOWED),
        'allowed: a list of host:port, e.g. [server-a.example.org:8081, server-b.example.org:8081]',
      )
      .min(1, 'allowed: a list of at least one host:port')
      .superRefine((addresses, ctx) => {
        addresses.forEach((address, index) => {
          const first = addresses.indexOf(address);
          if (first !== index)
            ctx.addIssue({
              code: 'custom',
              path: [index],
              message: `allowed: each server once (the same as server_addresses[${first}])`,
            });
        });
      })
      .optional(),
    trust_domain: z
      .string('allowed: a trust domain name such as example.org')
      .regex(TRUST_DOMAIN, 'allowed: lowercase letters, digits, ".", "-" and "_" (e.g. example.org)'),
    trust_bundle: absolutePath.optional(),
    /** Where to fetch the bootstrap bundle over HTTPS (web PKI) while the agent has none of its own. */
    trust_bundle_url: z
      .string()
      .refine(
        isHttpsUrl,
        "allowed: an https:// URL serving the server's bundle, without user:password (http:// is refused: the bundle must come over TLS verified by this host's CAs)",
      )
      .optional(),
    /** The format of trust_bundle or trust_bundle_url: CA certificates, or a SPIFFE bundle document. */
    trust_bundle_format: z.enum(['pem', 'spiffe']).default(AGENT_DEFAULTS.trust_bundle_format),
    insecure_bootstrap: z.boolean().default(false),
    data_dir: absolutePath.default(AGENT_DEFAULTS.data_dir),
    socket_path: absolutePath.default(AGENT_DEFAULTS.socket_path),
    attestation: z.enum(['tpm', 'join_token']).default(AGENT_DEFAULTS.attestation),
    join_token: z.string().min(1).optional(),
    /** A file holding the join token, 0600 or 0400 and owned by the agent's user (checked at load). */
    join_token_file: absolutePath.optional(),
    tcti: z.string().min(1).default(AGENT_DEFAULTS.tcti),
    ek: z
      .enum(['auto', 'rsa2048', 'ecc-p256', 'rsa2048-high', 'ecc-p256-high', 'ecc-p384-high'])
      .default(AGENT_DEFAULTS.ek),
    event_log_path: z
      .string()
      .default(AGENT_DEFAULTS.event_log_path)
      .refine((text) => text === 'none' || text.startsWith('/'), 'allowed: an absolute path, or none'),
    log_level: z.enum(LOG_LEVELS).default(AGENT_DEFAULTS.log_level),
    /** json: ISO time and level names; pino: epoch-millisecond time and level numbers. */
    log_format: z.enum(LOG_FORMATS).default(AGENT_DEFAULTS.log_format),
    retry_initial: duration(AGENT_DEFAULTS.retry_initial),
    retry_max: duration(AGENT_DEFAULTS.retry_max),
    /** How often entries, bundles and due SVIDs are fetched from the server. */
    sync_interval: duration(AGENT_DEFAULTS.sync_interval).refine(
      (seconds) => seconds >= 0.1,
      'allowed: a duration of at least 100ms, e.g. 5s',
    ),
    /**
     * Plain HTTP `host:port` serving Prometheus `/metrics`; absent: no metrics listener (as SPIRE's
     * telemetry is off until configured). Unauthenticated: loopback or a management network.
     */
    metrics_address: z
      .string('allowed: host:port, e.g. 127.0.0.1:9988 or [::1]:9988')
      .refine((text) => {
        const port = HOST_PORT.exec(text)?.[2];
        return port !== undefined && Number(port) <= 65535;
      }, 'allowed: host:port, e.g. 127.0.0.1:9988 or [::1]:9988, port 0..65535')
      .optional(),
    /** Which workload attestors produce selectors; default the unix one alone. */
    workload_attestors: workloadAttestors,
  })
  .refine((c) => c.server_address !== undefined || c.server_addresses !== undefined, {
    message:
      'allowed: server_address (host:port of ironroot-server, e.g. server.example.org:8081) or server_addresses (a list of them)',
    path: ['server_address'],
  })
  // Two keys for the servers would leave the reader guessing which the agent uses.
  .refine((c) => c.server_address === undefined || c.server_addresses === undefined, {
    message: 'allowed: server_address (one server) or server_addresses (a list), not both',
    path: ['server_addresses'],
  })
  .refine(
    (c) => c.attestation !== 'join_token' || c.join_token !== undefined || c.join_token_file !== undefined,
    {
      message: 'allowed: attestation join_token needs join_token_file (or --join-token-file) or join_token',
      path: ['join_token'],
    },
  )
  .refine((c) => c.join_token === undefined || c.join_token_file === undefined, {
    message: 'allowed: join_token or join_token_file, not both',
    path: ['join_token_file'],
  })
  .refine((c) => c.trust_bundle !== undefined || c.trust_bundle_url !== undefined || c.insecure_bootstrap, {
    message:
      "allowed: a trust_bundle file with the server's trust bundle (ironroot-server bundle show), a trust_bundle_url serving it, or insecure_bootstrap: true for labs",
    path: ['trust_bundle'],
  })
  .refine((c) => c.trust_bundle === undefined || c.trust_bundle_url === undefined, {
    message: 'allowed: trust_bundle or trust_bundle_url, not both',
    path: ['trust_bundle_url'],
  })
  .refine((c) => c.trust_bundle_url === undefined || !c.insecure_bootstrap, {
    message: 'allowed: trust_bundle_url or insecure_bootstrap: true, not both',
    path: ['trust_bundle_url'],
  })
  // Together, insecure_bootstrap would win and the bundle the operator gave would silently go unused.
  .refine((c) => c.trust_bundle === undefined || !c.insecure_bootstrap, {
    message: 'allowed: trust_bundle or insecure_bootstrap: true, not both',
    path: ['trust_bundle'],
  });

export type AgentConfig = z.output<typeof agentConfigSchema>;

export type AgentConfigInput = z.input<typeof agentConfigSchema>;
