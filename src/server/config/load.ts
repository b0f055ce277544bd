/**
 * Reads the YAML file, lays flags over it, validates the result once, and turns every schema
 * complaint into a line naming the key path, the bad value and what is allowed.
 *
 * @module
 */
import { readFileSync } from 'node:fs';
import { parseDocument } from 'yaml';
import { z } from 'zod';
import { ConfigFileError, ConfigInvalidError } from '../errors.js';
import { configSchema, type ServerConfig } from './schema.js';

/** Values given on the command line; each replaces the file's key of the same name. */
export interface ConfigOverrides {
  trust_domain?: string;
  data_dir?: string;
  bind_address?: string;
  admin_socket?: string;
  health_address?: string;
  key_manager?: string;
  development?: boolean;
  log_level?: string;
  log_format?: string;
  /** `--tpm-ek-ca`, `--tpm-ek-hash-allow`, `--tpm-pcrs`: laid over the file's tpm_attestation. */
  tpm_attestation?: { ek_ca_dir?: string; ek_hash_allow_file?: string; pcrs?: string };
}

export interface LoadConfigOptions {
  file?: string;
  overrides?: ConfigOverrides;
}

export function loadConfig(options: LoadConfigOptions): ServerConfig {
  const raw = options.file === undefined ? {} : readConfigFile(options.file);
  const merged: Record<string, unknown> = { ...raw };
  const { tpm_attestation: tpmFlags, ...flat } = options.overrides ?? {};
  for (const [key, value] of Object.entries(flat)) {
    if (value !== undefined) merged[key] = value;
  }
  const tpmSet = Object.fromEntries(Object.entries(tpmFlags ?? {}).filter(([, v]) => v !== undefined));
  if (Object.keys(tpmSet).length > 0) {
    const fromFile = merged.tpm_attestation;
    merged.tpm_attestation = {
      ...(fromFile !== null && typeof fromFile === 'object' ? fromFile : {}),
      ...tpmSet,
    };
  }
  return validateConfig(merged, options.file ?? 'command-line flags');
}

export function validateConfig(raw: unknown, source: string): ServerConfig {
  const result = configSchema.safeParse(raw, { reportInput: true });
  if (result.success) return result.data;
  throw new ConfigInvalidError(
    source,
    result.error.issues.map((issue) => describeIssue(issue, raw, configSchema)),
  );
}

function readConfigFile(file: string): Record<string, unknown> {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (error) {
    throw new ConfigFileError(`cannot read config file ${file}: ${(error as Error).message}`, error);
  }
  const document = parseDocument(text, { uniqueKeys: true });
  if (document.errors.length > 0) {
    const lines = document.errors.map((e) => e.message.split('\n')[0]);
    throw new ConfigFileError(`config file ${file} is not valid YAML: ${lines.join('; ')}`);
  }
  const value: unknown = document.toJS();
  if (value === null || value === undefined) return {};
  if (typeof value !== 'object' || Array.isArray(value)) {
    throw new ConfigFileError(
      `config file ${file} must hold a mapping of keys (trust_domain: …), not a list or scalar`,
    );
  }
  return value as Record<string, unknown>;
}

/** One line for a schema complaint: the key path, the value as written, and what `schema` allows there. */
export function describeIssue(issue: z.core.$ZodIssue, raw: unknown, schema: z.ZodType): string {
  const path = formatPath(issue.path);
  if (issue.code === 'unrecognized_keys') {
    const allowed = allowedKeys(issue.path, schema, raw);
    return issue.keys
      .map((key) => `${path ? `${path}.` : ''}${key}: unknown key; allowed keys: ${allowed.join(', ')}`)
      .join('\n  ');
  }
  // The value as the operator wrote it (issue.input is the parent object for cross-field checks).
  const written = valueAt(raw, issue.path);
  const value = written === undefined ? 'missing' : `got ${formatValue(written)}`;
  return `${path || '(top level)'}: ${value}; ${allowedText(issue)}`;
}

function allowedText(issue: z.core.$ZodIssue): string {
  if (issue.code === 'invalid_value')
    return `allowed: one of ${issue.values.map((v) => formatValue(v)).join(', ')}`;
  if (issue.message.startsWith('allowed:')) return issue.message;
  if (issue.code === 'too_small') return `allowed: at least ${String(issue.minimum)}`;
  if (issue.code === 'too_big') return `allowed: at most ${String(issue.maximum)}`;
  if (issue.code === 'invalid_type') return `allowed: a ${issue.expected}`;
  return `allowed: ${issue.message}`;
}

/**
 * Keys the schema allows at `path`, found by walking object shapes through optional/default
 * wrappers; a union of mappings told apart by `type` takes the one the written value names.
 */
function allowedKeys(path: readonly PropertyKey[], schema: z.ZodType, raw: unknown): string[] {
  let node: unknown = schema;
  for (let depth = 0; depth <= path.length; depth++) {
    node = unwrap(node, valueAt(raw, path.slice(0, depth)));
    const part = path[depth];
    if (part === undefined) break;
    node = shapeOf(node)?.[String(part)];
  }
  return Object.keys(shapeOf(node) ?? {});
}

function unwrap(node: unknown, written: unknown): unknown {
  let current = node;
  for (;;) {
    if (current instanceof z.ZodOptional || current instanceof z.ZodDefault) current = current.unwrap();
    // A preprocess step's own schema is its output side.
    else if (current instanceof z.ZodPipe)
      current = current.in instanceof z.ZodTransform ? current.out : current.in;
    else if (current instanceof z.ZodUnion && current.options.some((o) => o instanceof z.ZodObject)) {
      const objects = current.options.filter((o) => o instanceof z.ZodObject);
      const type = written !== null && typeof written === 'object' ? Reflect.get(written, 'type') : undefined;
      // `none` or a mapping: the keys are the mapping's; of several, the one whose type matches.
      current = objects.find((o) => typeMatches(o, type)) ?? objects[0];
    } else return current;
  }
}

function typeMatches(node: z.ZodObject, type: unknown): boolean {
  const literal = shapeOf(node)?.type;
  return literal instanceof z.ZodLiteral && literal.values.has(type as z.core.util.Literal);
}

function shapeOf(node: unknown): Record<string, unknown> | undefined {
  return node instanceof z.ZodObject ? (node.shape as Record<string, unknown>) : undefined;
}

function valueAt(raw: unknown, path: readonly PropertyKey[]): unknown {
  let current = raw;
  for (const part of path) {
    if (current === null || typeof current !== 'object') return undefined;
    current = Reflect.get(current, part);
  }
  return current;
}

function formatPath(path: readonly PropertyKey[]): string {
  return path
    .map((part, index) =>
      typeof part === 'number' ? `[${part}]` : `${index === 0 ? '' : '.'}${String(part)}`,
    )
    .join('');
}

/**
 * A value as it appears in messages, with any PKCS#11 PIN or PostgreSQL password hidden: config
 * values end up in logs.
 */
export function formatValue(value: unknown): string {
  const text = JSON.stringify(value) ?? String(value);
  return redactSecrets(text);
}

export function redactSecrets(text: string): string {
  return text
    .replace(/(pin-value=)[^;?&"]*/gi, '$1REDACTED')
    .replace(/([a-z][a-z0-9+.-]*:\/\/[^:/@?#"\s]*:)[^@/?#"\s]*@/gi, '$1REDACTED@')
    .replace(/([?&]password=)[^&#"\s]*/gi, '$1REDACTED');
}
