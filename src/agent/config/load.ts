/**
 * Reads the agent's YAML file, lays flags over it, validates once, and names every problem by
 * key path, bad value and what is allowed.
 *
 * @module
 */
import { readFileSync, statSync } from 'node:fs';
import { parseDocument } from 'yaml';
import { z } from 'zod';
import { printableUrl } from '../../host/index.js';
import { AgentError } from '../errors.js';
import { type AgentConfig, agentConfigSchema } from './schema.js';

export type AgentConfigOverrides = { [K in keyof z.input<typeof agentConfigSchema>]?: unknown };

/** `readToken: false` (healthcheck) leaves join_token_file unread: the file is the agent user's alone. */
export function loadAgentConfig(options: {
  file?: string;
  overrides?: AgentConfigOverrides;
  readToken?: boolean;
}): AgentConfig {
  const raw = options.file === undefined ? {} : readConfigFile(options.file);
  if (options.file !== undefined && raw.join_token !== undefined) refuseReadableToken(options.file);
  const overrides = options.overrides ?? {};
  // A flag naming the servers replaces the file's servers, whichever key the file used for them.
  if (overrides.server_address !== undefined || overrides.server_addresses !== undefined) {
    delete raw.server_address;
    delete raw.server_addresses;
  }
  for (const [key, value] of Object.entries(overrides)) {
    if (value !== undefined) raw[key] = value;
  }
  const result = agentConfigSchema.safeParse(raw);
  if (result.success)
    return result.data.join_token_file === undefined || options.readToken === false
      ? result.data
      : { ...result.data, join_token: readJoinTokenFile(result.data.join_token_file) };
  const lines = result.error.issues.map((issue) => describe(issue, raw));
  throw new AgentError(
    'ERR_AGENT_CONFIG_INVALID',
    `invalid configuration in ${options.file ?? 'command-line flags'}:\n  ${lines.join('\n  ')}`,
  );
}

function readConfigFile(file: string): Record<string, unknown> {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (cause) {
    throw new AgentError(
      'ERR_AGENT_CONFIG_FILE',
      `cannot read config file ${file}: ${(cause as Error).message}`,
    );
  }
  const document = parseDocument(text, { uniqueKeys: true });
  if (document.errors.length > 0)
    throw new AgentError(
      'ERR_AGENT_CONFIG_FILE',
      `config file ${file} is not valid YAML: ${document.errors.map((e) => e.message.split('\n')[0]).join('; ')}`,
    );
  const value: unknown = document.toJS();
  if (value === null || value === undefined) return {};
  if (typeof value !== 'object' || Array.isArray(value))
    throw new AgentError(
      'ERR_AGENT_CONFIG_FILE',
      `config file ${file} must hold a mapping of keys, not a list or scalar`,
    );
  return { ...(value as Record<string, unknown>) };
}

const mode = (bits: number) => `0${(bits & 0o777).toString(8).padStart(3, '0')}`;

/** A config file holding the join token inline must be private to its owner, as a token file must. */
function refuseReadableToken(file: string): void {
  const bits = statSync(file).mode;
  if ((bits & 0o044) !== 0)
    throw new AgentError(
      'ERR_AGENT_CONFIG_UNSAFE',
      `config file ${file} holds join_token but is readable by group or others (mode ${mode(bits)}); chmod 600 ${file}, or move the token to a join_token_file (mode 0600)`,
    );
}

/**
 * The join token from `join_token_file`: a regular file, 0600 or 0400, owned by the user the agent
 * runs as, so no other user of the host can read the token (as anyone can read a command line).
 */
function readJoinTokenFile(file: string): string {
  let stats: ReturnType<typeof statSync>;
  let text: string;
  try {
    stats = statSync(file);
    text = stats.isFile() ? readFileSync(file, 'utf8') : '';
  } catch (cause) {
    throw new AgentError(
      'ERR_AGENT_CONFIG_FILE',
      `cannot read join_token_file ${file}: ${(cause as Error).message}`,
      { cause },
    );
  }
  if (!stats.isFile())
    throw new AgentError('ERR_AGENT_CONFIG_FILE', `join_token_file ${file} is not a regular file`);
  const uid = process.geteuid?.();
  if (uid !== undefined && stats.uid !== uid)
    throw new AgentError(
      'ERR_AGENT_CONFIG_UNSAFE',
      `join_token_file ${file} is owned by uid ${stats.uid}, not by uid ${uid} that the agent runs as; chown it to the agent's user`,
    );
  const bits = stats.mode & 0o777;
  if (bits !== 0o600 && bits !== 0o400)
    throw new AgentError(
      'ERR_AGENT_CONFIG_UNSAFE',
      `join_token_file ${file} has mode ${mode(bits)}; it must be 0600 or 0400 (chmod 600 ${file})`,
    );
  const token = text.trim();
  if (token === '')
    throw new AgentError(
      'ERR_AGENT_CONFIG_FILE',
      `join_token_file ${file} is empty; write the token from "ironroot-server token generate" into it`,
    );
  return token;
}

function describe(issue: z.core.$ZodIssue, raw: Record<string, unknown>): string {
  // A list element by its index: server_addresses[1].
  const path = issue.path
    .map((part, i) => (typeof part === 'number' ? `[${part}]` : `${i > 0 ? '.' : ''}${String(part)}`))
    .join('');
  if (issue.code === 'unrecognized_keys') {
    const keys = allowedKeys(issue.path);
    const allowed = keys.length > 0 ? keys.join(', ') : '(none)';
    return issue.keys
      .map((key) => `${path ? `${path}.` : ''}${key}: unknown key; allowed keys: ${allowed}`)
      .join('\n  ');
  }
  // The value as written, at the issue's full path (nested keys such as workload_attestors.k8s too).
  const written = valueAt(raw, issue.path);
  const got = written === undefined ? 'missing' : `got ${JSON.stringify(written)}`;
  let allowed: string;
  if (issue.code === 'invalid_value')
    allowed = `allowed: one of ${issue.values.map((v) => JSON.stringify(v)).join(', ')}`;
  else if (issue.message.startsWith('allowed:')) allowed = issue.message;
  else if (issue.code === 'invalid_type') allowed = `allowed: a ${issue.expected}`;
  else allowed = `allowed: ${issue.message}`;
  return `${path || '(top level)'}: ${secretFree(path, written) ?? got}; ${allowed}`;
}

/**
 * What to say instead of a value that holds a secret: the join token, a URL with credentials, and a
 * URL's query (a presigned URL's signature).
 * Secrets never appear in messages.
 */
function secretFree(path: string, written: unknown): string | undefined {
  if (written === undefined) return undefined;
  if (path === 'join_token') return 'got a token';
  if (path === 'trust_bundle_url' && typeof written === 'string') {
    if (/^[^/]*\/\/[^/]*@/.test(written)) return 'got a URL with user:password';
    if (/[?#]/.test(written)) return `got ${JSON.stringify(printableUrl(written))} (its query withheld)`;
  }
  return undefined;
}

function valueAt(raw: unknown, path: readonly PropertyKey[]): unknown {
  let current = raw;
  for (const part of path) {
    if (current === null || typeof current !== 'object') return undefined;
    current = Reflect.get(current, part);
  }
  return current;
}

/** Keys the schema allows at `path`, found by walking object shapes through their wrappers. */
function allowedKeys(path: readonly PropertyKey[]): string[] {
  let node: unknown = agentConfigSchema;
  for (const part of path) node = shapeOf(unwrap(node))?.[String(part)];
  return Object.keys(shapeOf(unwrap(node)) ?? {});
}

function unwrap(node: unknown): unknown {
  let current = node;
  for (;;) {
    if (
      current instanceof z.ZodOptional ||
      current instanceof z.ZodDefault ||
      current instanceof z.ZodNullable
    )
      current = current.unwrap();
    else if (current instanceof z.ZodPipe) current = current.in;
    else return current;
  }
}

function shapeOf(node: unknown): Record<string, unknown> | undefined {
  return node instanceof z.ZodObject ? (node.shape as Record<string, unknown>) : undefined;
}
