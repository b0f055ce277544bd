import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import type { PersistedEntry, PersistedSvid } from '../../src/agent/cache.js';
import {
  type CacheFileContent,
  cacheFileText,
  type OpenedCacheFile,
  openCache,
  sealCache,
} from '../../src/agent/cachefile.js';
import { AgentStore } from '../../src/agent/store.js';
import { newKeyPair } from '../../src/spiffe/new-key-pair.js';

const agentKey = newKeyPair('ec', { namedCurve: 'P-256' }).privateKey;

function entry(n: number, hint = ''): PersistedEntry {
  return {
    id: `entry-${n}`,
    spiffe_id: `spiffe://example.org/workload/${n}`,
    selectors: [`unix:uid:${1000 + n}`, 'unix:group:"quoted"'],
    federates_with: n % 2 === 0 ? [] : ['spiffe://other.example'],
    hint,
    revision_number: n,
    created_at: 1_700_000_000 + n,
    expires_at: 0,
  };
}

function svid(n: number): PersistedSvid {
  return {
    entry_id: `entry-${n}`,
    entry_revision: n,
    // About the size of a real leaf and key, base64.
    chain: [randomBytes(700).toString('base64')],
    key: randomBytes(138).toString('base64'),
    expires_at: 1_800_000_000 + n,
  };
}

function content(count: number, untrusted: CacheFileContent['untrusted'] = null): OpenedCacheFile {
  const numbers = Array.from({ length: count }, (_, n) => n);
  return {
    untrusted,
    cache: {
      bundle: '{"keys":[]}',
      federated: [{ trust_domain: 'other.example', document: '{"keys":[{"use":"x509-svid"}]}' }],
      // Names a workload chose may hold anything JSON must escape, and characters beyond ASCII.
      entries: numbers.map((n) => entry(n, n === 1 ? 'line\nbreak "q" \\ \u2028 é 🔑' : '')),
      svids: numbers.map(svid),
    },
  };
}

/** The same content with entries and SVIDs given one at a time, as the cache's snapshot gives them. */
function lazy(of: CacheFileContent): CacheFileContent {
  const { entries, svids } = of.cache;
  return {
    ...of,
    cache: {
      ...of.cache,
      entries: {
        *[Symbol.iterator]() {
          yield* entries;
        },
      },
      svids: {
        *[Symbol.iterator]() {
          yield* svids;
        },
      },
    },
  };
}

/** The file's bytes, its pieces joined. */
const sealed = (of: CacheFileContent): Buffer => Buffer.concat([...sealCache(of, agentKey)]);

describe('the SVID cache file', () => {
  it('writes exactly the text JSON.stringify gives, in pieces', () => {
    for (const c of [
      content(0),
      content(1),
      content(3, { code: 'ERR_AGENT_REATTEST_REFUSED', reason: 'quote "failed"' }),
    ]) {
      const pieces = [...cacheFileText(lazy(c))];
      expect(pieces.join('')).toBe(JSON.stringify(c));
      // One piece per entry and per SVID, besides the four around them.
      expect(pieces.length).toBe(c.cache.svids.length * 2 + 3);
    }
  });

  it('seals a snapshot given one item at a time as it seals the same lists', () => {
    const whole = content(300, { code: 'ERR_X', reason: 'why' });
    const opened = openCache(sealed(lazy(whole)), agentKey, '/var/lib/ironroot-agent/svid-cache.bin');
    expect(opened).toEqual(whole);
    expect(openCache(sealed(whole), agentKey, 'cache')).toEqual(whole);
  });

  it('still refuses a file altered anywhere in the body', () => {
    const file = sealed(lazy(content(50)));
    for (const at of [60, Math.floor(file.length / 2), file.length - 20]) {
      const altered = Buffer.from(file);
      altered[at] = (altered[at] ?? 0) ^ 1;
      expect(() => openCache(altered, agentKey, 'cache')).toThrow(/fails authentication/);
    }
  });
});

describe('writing the SVID cache file', () => {
  it('writes it piece by piece, and leaves the file it replaces whole when sealing fails part-way', () => {
    const dir = mkdtempSync(join(tmpdir(), 'ironroot-cachefile-'));
    try {
      const store = new AgentStore(dir);
      const first = content(300);
      const pieces = [...sealCache(first, agentKey)];
      // Header, the ciphertext in pieces of about 16 KiB (300 SVIDs are about 300 KB), final, tag.
      expect(pieces.length).toBeGreaterThan(10);
      store.saveCache(pieces);
      expect(statSync(store.cachePath).mode & 0o777).toBe(0o600);
      const before = readFileSync(store.cachePath);
      expect(openCache(before, agentKey, store.cachePath)).toEqual(first);

      const broken = content(300);
      const svids = broken.cache.svids;
      const failing: CacheFileContent = {
        ...broken,
        cache: {
          ...broken.cache,
          svids: {
            *[Symbol.iterator]() {
              yield* svids.slice(0, 200);
              throw new Error('the cache changed under the snapshot');
            },
          },
        },
      };
      expect(() => store.saveCache(sealCache(failing, agentKey))).toThrow(/changed under the snapshot/);
      expect(readFileSync(store.cachePath).equals(before)).toBe(true);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
