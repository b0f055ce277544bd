/**
 * Reads the agent's YAML file, lays flags over it, validates once, and names every problem by
 * key path, bad value and what is allowed.
 *
 * @module
 */
import { readFileSync } from 'node:fs';
import { parseDocument } from 'yaml';
import type { z } from 'zod';
import { AgentError } from '../errors.js';
import { type AgentConfig, agentConfigSchema } from './schema.js';

export type AgentConfigOverrides = { [K in keyof z.input<typeof agentConfigSchema>]?: unknown };

export function loadAgentConfig(options: { file?: string; overrides?: AgentConfigOverrides }): AgentConfig {
  const raw = options.file === undefined ? {} : readConfigFile(options.file);
  for (const [key, value] of Object.entries(options.overrides ?? {})) {
    if (value !== undefined) raw[key] = value;
  }
  const result = agentConfigSchema.safeParse(raw);
  if (result.success) return result.data;
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

function describe(issue: z.core.$ZodIssue, raw: Record<string, unknown>): string {
  const path = issue.path.map(String).join('.') || '(top level)';
  if (issue.code === 'unrecognized_keys')
    return issue.keys
      .map((key) => `${key}: unknown key; allowed keys: ${Object.keys(agentConfigSchema.shape).join(', ')}`)
      .join('\n  ');
  const written = issue.path.length === 1 ? raw[String(issue.path[0])] : undefined;
  const got = written === undefined ? 'missing' : `got ${JSON.stringify(written)}`;
  let allowed: string;
  if (issue.code === 'invalid_value')
    allowed = `allowed: one of ${issue.values.map((v) => JSON.stringify(v)).join(', ')}`;
  else if (issue.message.startsWith('allowed:')) allowed = issue.message;
  else if (issue.code === 'invalid_type') allowed = `allowed: a ${issue.expected}`;
  else allowed = `allowed: ${issue.message}`;
  // The join token is a secret: its value never appears in messages.
  return `${path}: ${path === 'join_token' && written !== undefined ? 'got a token' : got}; ${allowed}`;
}
