/**
 * Reads `entry create --data FILE`: SPIRE's `-data` shape (`{"entries": [{…}]}`, or a bare list),
 * with the fields of `entry show --output json`. A file that is not such JSON is refused as a
 * whole; an entry with an unknown, unsupported or mistyped field is refused on its own, by index,
 * and the others are still sent.
 *
 * @module
 */
import { readFileSync } from 'node:fs';
import { status } from '@grpc/grpc-js';
import type { EntryMessage, SelectorMessage, StatusMessage } from '../admin/messages.js';
import { ServerError } from '../errors.js';
import { parseSelector } from '../registration/validate.js';
import { CliError } from './common.js';

/** One entry of the file: ready to send, or refused here with the status the server would give. */
export type DataEntry = { entry: EntryMessage } | { status: StatusMessage };

const STRING_FIELDS = ['spiffe_id', 'parent_id', 'hint'] as const;
const INTEGER_FIELDS = ['x509_svid_ttl', 'jwt_svid_ttl', 'expires_at'] as const;
const BOOLEAN_FIELDS = ['admin', 'downstream'] as const;
const LIST_FIELDS = ['dns_names', 'federates_with'] as const;
/** SPIRE's name for expires_at in its -data files. */
const SPIRE_EXPIRY = 'entryExpiry';
const KNOWN = [
  ...STRING_FIELDS,
  ...INTEGER_FIELDS,
  ...BOOLEAN_FIELDS,
  ...LIST_FIELDS,
  'selectors',
  SPIRE_EXPIRY,
];

/** Fields SPIRE's files may carry that ironroot does not take, and why. */
const UNSUPPORTED: Record<string, string> = {
  id: 'the server assigns entry IDs',
  entry_id: 'the server assigns entry IDs',
  revision_number: 'the server sets it',
  created_at: 'the server sets it',
  ttl: 'it is deprecated in SPIRE; use x509_svid_ttl',
  store_svid: 'ironroot has no SVIDStore',
};

class FieldError extends Error {}

export function blankEntry(): EntryMessage {
  return {
    id: '',
    spiffe_id: '',
    parent_id: '',
    selectors: [],
    x509_svid_ttl: 0,
    jwt_svid_ttl: 0,
    dns_names: [],
    admin: false,
    downstream: false,
    federates_with: [],
    hint: '',
    expires_at: 0,
    revision_number: 0,
    created_at: 0,
  };
}

function selectorOf(value: unknown, position: number): SelectorMessage {
  // "type:value" as on the command line; parseSelector throws SelectorMalformedError.
  if (typeof value === 'string') return parseSelector(value);
  if (value !== null && typeof value === 'object') {
    const keys = Object.keys(value);
    const type: unknown = Reflect.get(value, 'type');
    const text: unknown = Reflect.get(value, 'value');
    const extra = keys.filter((k) => k !== 'type' && k !== 'value');
    if (typeof type === 'string' && typeof text === 'string' && extra.length === 0)
      return { type, value: text };
  }
  throw new FieldError(
    `selectors[${position}] must be {"type": …, "value": …} or a "type:value" string, not ${JSON.stringify(value)}`,
  );
}

function entryOf(item: unknown): EntryMessage {
  if (item === null || typeof item !== 'object' || Array.isArray(item))
    throw new FieldError('it is not an object');
  const fields = item as Record<string, unknown>;
  for (const key of Object.keys(fields)) {
    const why = UNSUPPORTED[key];
    if (why !== undefined) throw new FieldError(`field "${key}" is not supported: ${why}; remove it`);
    if (!KNOWN.includes(key))
      throw new FieldError(`unknown field "${key}"; known fields: ${KNOWN.join(', ')}`);
  }
  const entry = blankEntry();
  for (const key of STRING_FIELDS) {
    const value = fields[key];
    if (value === undefined) continue;
    if (typeof value !== 'string') throw new FieldError(`${key} must be a string`);
    entry[key] = value;
  }
  if (fields.expires_at !== undefined && fields[SPIRE_EXPIRY] !== undefined)
    throw new FieldError(`give expires_at or ${SPIRE_EXPIRY} (SPIRE's name for it), not both`);
  for (const key of [...INTEGER_FIELDS, SPIRE_EXPIRY] as const) {
    const value = fields[key];
    if (value === undefined) continue;
    if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 0)
      throw new FieldError(`${key} must be a non-negative integer`);
    entry[key === SPIRE_EXPIRY ? 'expires_at' : key] = value;
  }
  for (const key of BOOLEAN_FIELDS) {
    const value = fields[key];
    if (value === undefined) continue;
    if (typeof value !== 'boolean') throw new FieldError(`${key} must be true or false`);
    entry[key] = value;
  }
  for (const key of LIST_FIELDS) {
    const value = fields[key];
    if (value === undefined) continue;
    if (!Array.isArray(value) || !value.every((v) => typeof v === 'string'))
      throw new FieldError(`${key} must be a list of strings`);
    entry[key] = value;
  }
  const selectors = fields.selectors;
  if (selectors !== undefined) {
    if (!Array.isArray(selectors)) throw new FieldError('selectors must be a list');
    entry.selectors = selectors.map(selectorOf);
  }
  return entry;
}

/** The status an entry refused here gets: the named server error's, else invalid argument. */
function refusal(error: unknown): StatusMessage {
  if (error instanceof ServerError)
    return { code: error.grpcStatus, error_code: error.code, message: error.message };
  if (error instanceof FieldError)
    return { code: status.INVALID_ARGUMENT, error_code: 'ERR_INVALID_ARGUMENT', message: error.message };
  throw error;
}

/** The file's entries, in order; throws CliError naming the file when it is not an entries file. */
export function readEntryData(file: string): DataEntry[] {
  let text: string;
  try {
    text = readFileSync(file === '-' ? 0 : file, 'utf8');
  } catch (error) {
    throw new CliError('ERR_CLI_FILE', `--data ${file}: cannot read it: ${(error as Error).message}`);
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (error) {
    throw new CliError('ERR_CLI_DATA_INVALID', `--data ${file}: not valid JSON: ${(error as Error).message}`);
  }
  const shape = `expected {"entries": [{…}, …]} (as SPIRE's -data) or a JSON list of entries`;
  let list: unknown[];
  if (Array.isArray(parsed)) list = parsed;
  else if (parsed !== null && typeof parsed === 'object' && Array.isArray(Reflect.get(parsed, 'entries'))) {
    const extra = Object.keys(parsed).filter((k) => k !== 'entries');
    if (extra.length > 0)
      throw new CliError(
        'ERR_CLI_DATA_INVALID',
        `--data ${file}: unknown top-level field "${extra[0]}"; ${shape}`,
      );
    list = Reflect.get(parsed, 'entries') as unknown[];
  } else throw new CliError('ERR_CLI_DATA_INVALID', `--data ${file}: ${shape}`);
  if (list.length === 0) throw new CliError('ERR_CLI_DATA_INVALID', `--data ${file}: it holds no entries`);
  return list.map((item) => {
    try {
      return { entry: entryOf(item) };
    } catch (error) {
      return { status: refusal(error) };
    }
  });
}
