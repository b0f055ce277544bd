/**
 * The on-disk form of the workload SVID cache (`svid-cache.bin` in the data directory), so an agent
 * restarted while the server is away still serves the SVIDs it held.
 *
 * The file is sealed with AES-256-GCM under a key derived (HKDF-SHA256, fresh salt per write) from
 * the agent SVID's private key: a copy of the file alone is useless, and an agent that attested
 * again (a new key) cannot read what an earlier identity wrote. Layout:
 *
 * ```
 * magic "IRSC" | version (1 byte) | salt (16) | key check (16) | IV (12) | ciphertext | GCM tag (16)
 * ```
 *
 * Everything before the ciphertext is authenticated as additional data. The key check (also from
 * the HKDF output) tells "written under another agent key" apart from "damaged".
 *
 * @module
 */
import { createCipheriv, createDecipheriv, hkdfSync, type KeyObject, randomBytes } from 'node:crypto';
import type { CacheSnapshot, PersistedEntry, PersistedSvid } from './cache.js';
import { AgentError } from './errors.js';

export const CACHE_FILE_VERSION = 1;
const MAGIC = Buffer.from('IRSC', 'ascii');
const SALT = 16;
const CHECK = 16;
const IV = 12;
const TAG = 16;
const HEADER = MAGIC.length + 1 + SALT + CHECK + IV;

/** What the agent persists: the cache, and why the node was untrusted when it was written (null: trusted). */
export interface CacheFileContent {
  readonly untrusted: { readonly code: string; readonly reason: string } | null;
  readonly cache: CacheSnapshot;
}

/** A cache file as read back: entries and SVIDs as lists. */
export interface OpenedCacheFile extends CacheFileContent {
  readonly cache: CacheSnapshot & {
    readonly entries: readonly PersistedEntry[];
    readonly svids: readonly PersistedSvid[];
  };
}

/** Plaintext is handed to the cipher in pieces of about this many characters. */
const PIECE = 16 * 1024;

/**
 * Encrypts `content` under a key derived from `agentKey`, as the file's bytes in pieces (header,
 * ciphertext, tag) to be written in order as they come.
 *
 * The JSON is made and encrypted an entry or SVID at a time ({@link cacheFileText}) and each piece
 * is written before the next is made: with a thousand SVIDs, one string of it all was megabytes in
 * V8's large-object space at every write, which brought the agent's next full garbage collection
 * closer, and pieces collected into one buffer would live long enough to be promoted.
 */
export function* sealCache(content: CacheFileContent, agentKey: KeyObject): Generator<Buffer> {
  const salt = randomBytes(SALT);
  const { key, check } = derive(agentKey, salt, CACHE_FILE_VERSION);
  const iv = randomBytes(IV);
  const header = Buffer.concat([MAGIC, Buffer.of(CACHE_FILE_VERSION), salt, check, iv]);
  const cipher = createCipheriv('aes-256-gcm', key, iv);
  cipher.setAAD(header);
  yield header;
  let pending = '';
  for (const text of cacheFileText(content)) {
    pending += text;
    if (pending.length >= PIECE) {
      yield cipher.update(pending, 'utf8');
      pending = '';
    }
  }
  yield cipher.update(pending, 'utf8');
  yield cipher.final();
  yield cipher.getAuthTag();
}

/**
 * The file's JSON in pieces, exactly the text `JSON.stringify(content)` gives when entries and SVIDs
 * are lists, without ever holding it whole.
 */
export function* cacheFileText(content: CacheFileContent): Generator<string> {
  const { cache } = content;
  yield `{"untrusted":${JSON.stringify(content.untrusted)},"cache":{"bundle":${JSON.stringify(cache.bundle)},"federated":${JSON.stringify(cache.federated)},"entries":[`;
  yield* listItems(cache.entries);
  yield '],"svids":[';
  yield* listItems(cache.svids);
  yield ']}}';
}

function* listItems(items: Iterable<object>): Generator<string> {
  let first = true;
  for (const item of items) {
    yield first ? JSON.stringify(item) : `,${JSON.stringify(item)}`;
    first = false;
  }
}

/**
 * Decrypts and checks a sealed cache file, all or nothing.
 *
 * @throws AgentError `ERR_AGENT_CACHE_VERSION` (a format this agent does not read),
 *   `ERR_AGENT_CACHE_FOREIGN_KEY` (sealed under another agent key), `ERR_AGENT_CACHE_INVALID`
 *   (not a cache file, truncated, altered, or content of the wrong shape). `path` names the file.
 */
export function openCache(bytes: Uint8Array, agentKey: KeyObject, path: string): OpenedCacheFile {
  const data = Buffer.from(bytes);
  if (data.length < HEADER + TAG || !data.subarray(0, MAGIC.length).equals(MAGIC))
    throw invalid(path, 'it is not an ironroot SVID cache file, or it is truncated');
  const version = data[MAGIC.length];
  if (version !== CACHE_FILE_VERSION)
    throw new AgentError(
      'ERR_AGENT_CACHE_VERSION',
      `${path} is in format version ${version}, this agent reads version ${CACHE_FILE_VERSION}; it is ignored and replaced at the next sync`,
    );
  const saltAt = MAGIC.length + 1;
  const salt = data.subarray(saltAt, saltAt + SALT);
  const check = data.subarray(saltAt + SALT, saltAt + SALT + CHECK);
  const iv = data.subarray(saltAt + SALT + CHECK, HEADER);
  const derived = derive(agentKey, salt, version);
  if (!derived.check.equals(check))
    throw new AgentError(
      'ERR_AGENT_CACHE_FOREIGN_KEY',
      `${path} was written under another agent key (the node attested again since); it is ignored and replaced at the next sync`,
    );
  let plain: string;
  try {
    const decipher = createDecipheriv('aes-256-gcm', derived.key, iv);
    decipher.setAAD(data.subarray(0, HEADER));
    decipher.setAuthTag(data.subarray(data.length - TAG));
    plain = Buffer.concat([
      decipher.update(data.subarray(HEADER, data.length - TAG)),
      decipher.final(),
    ]).toString('utf8');
  } catch {
    throw invalid(path, 'it fails authentication (altered or damaged)');
  }
  try {
    return contentOf(JSON.parse(plain));
  } catch (cause) {
    throw invalid(path, `its content is malformed (${(cause as Error).message})`);
  }
}

/** 32 bytes of AES key, then 16 of key check; the version is bound into the info string. */
function derive(agentKey: KeyObject, salt: Uint8Array, version: number): { key: Buffer; check: Buffer } {
  const ikm = agentKey.export({ format: 'der', type: 'pkcs8' });
  const out = Buffer.from(hkdfSync('sha256', ikm, salt, `ironroot agent svid cache v${version}`, 32 + CHECK));
  return { key: out.subarray(0, 32), check: out.subarray(32) };
}

function invalid(path: string, why: string): AgentError {
  return new AgentError(
    'ERR_AGENT_CACHE_INVALID',
    `${path} cannot be used: ${why}; nothing is served from it, and it is replaced at the next sync`,
  );
}

/** The decrypted JSON, checked field by field: a sealed file is ours, but a bug must not reach the Workload API. */
function contentOf(value: unknown): OpenedCacheFile {
  const v = record(value, 'file');
  const untrusted =
    v.untrusted === null
      ? null
      : (() => {
          const u = record(v.untrusted, 'untrusted');
          return { code: str(u.code, 'untrusted.code'), reason: str(u.reason, 'untrusted.reason') };
        })();
  const c = record(v.cache, 'cache');
  return {
    untrusted,
    cache: {
      bundle: str(c.bundle, 'cache.bundle'),
      federated: list(c.federated, 'cache.federated').map((f, i) => {
        const r = record(f, `cache.federated[${i}]`);
        return { trust_domain: str(r.trust_domain, 'trust_domain'), document: str(r.document, 'document') };
      }),
      entries: list(c.entries, 'cache.entries').map((e, i) => entryOf(e, `cache.entries[${i}]`)),
      svids: list(c.svids, 'cache.svids').map((s, i) => svidOf(s, `cache.svids[${i}]`)),
    },
  };
}

function entryOf(value: unknown, at: string): PersistedEntry {
  const e = record(value, at);
  return {
    id: str(e.id, `${at}.id`),
    spiffe_id: str(e.spiffe_id, `${at}.spiffe_id`),
    selectors: list(e.selectors, `${at}.selectors`).map((s) => str(s, `${at}.selectors`)),
    federates_with: list(e.federates_with, `${at}.federates_with`).map((s) => str(s, `${at}.federates_with`)),
    hint: str(e.hint, `${at}.hint`),
    revision_number: num(e.revision_number, `${at}.revision_number`),
    created_at: num(e.created_at, `${at}.created_at`),
    expires_at: num(e.expires_at, `${at}.expires_at`),
  };
}

function svidOf(value: unknown, at: string): PersistedSvid {
  const s = record(value, at);
  return {
    entry_id: str(s.entry_id, `${at}.entry_id`),
    entry_revision: num(s.entry_revision, `${at}.entry_revision`),
    chain: list(s.chain, `${at}.chain`).map((c) => str(c, `${at}.chain`)),
    key: str(s.key, `${at}.key`),
    expires_at: num(s.expires_at, `${at}.expires_at`),
  };
}

function record(value: unknown, at: string): Record<string, unknown> {
  if (typeof value !== 'object' || value === null || Array.isArray(value))
    throw new Error(`${at} is not an object`);
  return value as Record<string, unknown>;
}

function list(value: unknown, at: string): unknown[] {
  if (!Array.isArray(value)) throw new Error(`${at} is not a list`);
  return value;
}

function str(value: unknown, at: string): string {
  if (typeof value !== 'string') throw new Error(`${at} is not a string`);
  return value;
}

function num(value: unknown, at: string): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value)) throw new Error(`${at} is not an integer`);
  return value;
}
