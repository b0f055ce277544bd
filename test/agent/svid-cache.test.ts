import type { KeyObject, X509Certificate } from 'node:crypto';
import { beforeAll, describe, expect, it } from 'vitest';
import { type CacheObserver, type IssuedSvid, SvidCache } from '../../src/agent/cache.js';
import type { EntryMessage } from '../../src/agent-api/proto.js';
import { SpiffeBundle, TrustDomain } from '../../src/spiffe/index.js';
import { newKeyPair } from '../../src/spiffe/new-key-pair.js';
import { caExtensions, craft, leafExtensions, p256 } from '../helpers/x509.js';

const TD = 'cache.example.org';

interface Ca {
  cert: X509Certificate;
  key: KeyObject;
}

async function newCa(name: string): Promise<Ca> {
  const { privateKey, publicKey } = p256();
  const cert = await craft({
    subject: `CN=${name}`,
    publicKey,
    selfKey: privateKey,
    extensions: caExtensions(`spiffe://${TD}`),
  });
  return { cert, key: privateKey };
}

function entryMessage(i: number): EntryMessage {
  return {
    id: `entry-${i}`,
    spiffe_id: `spiffe://${TD}/w/${i}`,
    parent_id: `spiffe://${TD}/node`,
    selectors: [`unix:uid:${1000 + i}`],
    x509_svid_ttl: 3600,
    jwt_svid_ttl: 0,
    dns_names: [],
    federates_with: [],
    hint: '',
    revision_number: 1,
    created_at: 1,
    expires_at: 0,
  };
}

/** The server's FetchBundles answer: the bundle with `roots`, `active` signing. */
function bundles(roots: readonly Ca[], active: Ca) {
  return {
    bundle: new SpiffeBundle(TrustDomain.parse(TD), { x509Authorities: roots.map((r) => r.cert) }).marshal(),
    active_x509_authority: new Uint8Array(active.cert.raw),
    federated: [],
  };
}

/** A cache holding `count` entries, with a CA-state check counter. */
function newCache(count: number): { cache: SvidCache; checks: () => number } {
  let checks = 0;
  const observer: CacheObserver = {
    lookup: () => {},
    rotated: () => {},
    caChecked: (n) => {
      checks += n;
    },
    notComputed: () => {},
  };
  const cache = new SvidCache({
    trustDomain: TD,
    attestors: [],
    bootstrapRoots: [],
    mintJwt: () => Promise.reject(new Error('not used')),
    observer,
  });
  cache.applyEntries({
    full: true,
    entries: Array.from({ length: count }, (_, i) => entryMessage(i)),
    deletedIds: [],
    cursor: { epoch: 'e', revision: 1, scope: 's' },
    pages: 1,
  });
  return { cache, checks: () => checks };
}

/** What the server would answer: an SVID signed by `ca` for every entry in `ids`, valid over `validity`. */
async function issued(
  ca: Ca,
  ids: readonly number[],
  validity: (i: number) => { notBefore?: Date; notAfter?: Date } = () => ({}),
): Promise<IssuedSvid[]> {
  const answered: IssuedSvid[] = [];
  for (const i of ids) {
    const { privateKey, publicKey } = p256();
    const leaf = await craft({
      subject: '',
      publicKey,
      issuer: ca,
      extensions: leafExtensions(`spiffe://${TD}/w/${i}`),
      ...validity(i),
    });
    answered.push({
      entryId: `entry-${i}`,
      entryRevision: 1,
      chain: [new Uint8Array(leaf.raw)],
      expiresAt: Math.floor(new Date(leaf.validTo).getTime() / 1000),
      key: privateKey,
    });
  }
  return answered;
}

/** Stores (as a sync round would) an SVID signed by `ca` for every entry in `ids`. */
async function issue(
  cache: SvidCache,
  ca: Ca,
  ids: readonly number[],
  validity?: (i: number) => { notBefore?: Date; notAfter?: Date },
): Promise<void> {
  await cache.storeSvids(await issued(ca, ids, validity));
}

/** The material the cache serves entry `i`'s workload (selector unix:uid:1000+i), if any. */
const served = (cache: SvidCache, i: number) => cache.identities([`unix:uid:${1000 + i}`]).svids[0];

const now = () => Math.floor(Date.now() / 1000);
const dueIds = async (cache: SvidCache) => (await cache.due(now())).map((e) => e.id).sort();

describe('SvidCache.due: CA checks once per SVID and CA state', () => {
  let a: Ca;
  let b: Ca;
  let c: Ca;

  beforeAll(async () => {
    [a, b, c] = await Promise.all([newCa('a'), newCa('b'), newCa('c')]);
  });

  it('checks each SVID once while the CA state stays, and again when it changes', async () => {
    const { cache, checks } = newCache(3);
    cache.applyBundles(bundles([a], a));
    expect(await dueIds(cache)).toEqual(['entry-0', 'entry-1', 'entry-2']);
    expect(checks()).toBe(0);
    // Each checked as it is stored, so the next round checks none of them again.
    await issue(cache, a, [0, 1, 2]);
    expect(checks()).toBe(3);

    expect(await dueIds(cache)).toEqual([]);
    expect(checks()).toBe(3);
    // The same bundle again (every sync fetches it): nothing checked again.
    expect(cache.applyBundles(bundles([a], a))).toBe(false);
    expect(await dueIds(cache)).toEqual([]);
    expect(await dueIds(cache)).toEqual([]);
    expect(checks()).toBe(3);

    // A new root prepared beside A: checked again, and still fine.
    cache.applyBundles(bundles([a, b], a));
    expect(await dueIds(cache)).toEqual([]);
    expect(checks()).toBe(6);
  });

  it('re-issues every SVID the active authority did not sign after a CA rotation, and those that left the bundle', async () => {
    const { cache, checks } = newCache(3);
    cache.applyBundles(bundles([a, b], a));
    await issue(cache, a, [0, 1, 2]);
    expect(await dueIds(cache)).toEqual([]);
    expect(checks()).toBe(3);

    // B activated: every SVID signed by A is due; a failed check is not remembered.
    cache.applyBundles(bundles([a, b], b));
    expect(await dueIds(cache)).toEqual(['entry-0', 'entry-1', 'entry-2']);
    expect(checks()).toBe(6);
    await issue(cache, b, [0, 1]);
    expect(await dueIds(cache)).toEqual(['entry-2']);
    expect(checks()).toBe(9);
    expect(await dueIds(cache)).toEqual(['entry-2']);
    expect(checks()).toBe(10);

    // C replaces both without being active yet (no signer known): only the roots decide.
    cache.applyBundles({ ...bundles([c], c), active_x509_authority: new Uint8Array() });
    expect(await dueIds(cache)).toEqual(['entry-0', 'entry-1', 'entry-2']);
    expect(checks()).toBe(13);
  });

  it('re-issues SVIDs signed by an active authority the bundle does not hold', async () => {
    const { cache, checks } = newCache(2);
    cache.applyBundles(bundles([a], b));
    await issue(cache, b, [0, 1]);
    // B signed them, but no root vouches for B: a signature by the signer alone is not enough. Checked
    // when stored and again by `due`: a failed check is not remembered.
    expect(await dueIds(cache)).toEqual(['entry-0', 'entry-1']);
    expect(checks()).toBe(4);
    cache.applyBundles(bundles([a, b], b));
    expect(await dueIds(cache)).toEqual([]);
    expect(checks()).toBe(6);
  });

  it('keeps, without re-issuing them, the SVIDs of an authority rotated away from and back', async () => {
    const { cache, checks } = newCache(2);
    cache.applyBundles(bundles([a, b], a));
    await issue(cache, a, [0, 1]);
    cache.applyBundles(bundles([a, b], b));
    expect(await dueIds(cache)).toEqual(['entry-0', 'entry-1']);
    // A active again, in a bundle they were never checked against, before they were re-issued: A
    // signed them, so they stand.
    cache.applyBundles(bundles([a, b, c], a));
    expect(await dueIds(cache)).toEqual([]);
    expect(checks()).toBe(6);
  });

  it('checks a chain through an intermediate against the roots, not the signer alone', async () => {
    const root = await newCa('root');
    const { privateKey, publicKey } = p256();
    const intermediate: Ca = {
      cert: await craft({
        subject: 'CN=intermediate',
        publicKey,
        issuer: root,
        extensions: caExtensions(`spiffe://${TD}`),
      }),
      key: privateKey,
    };
    const { cache, checks } = newCache(2);
    cache.applyBundles(bundles([root], intermediate));
    const answered = await issued(intermediate, [0, 1]);
    for (const item of answered) item.chain = [...item.chain, new Uint8Array(intermediate.cert.raw)];
    await cache.storeSvids(answered);
    expect(await dueIds(cache)).toEqual([]);
    expect(checks()).toBe(2);
    // The same signer, but its root gone from the bundle: due, though the signer's part is known.
    cache.applyBundles(bundles([a], intermediate));
    expect(await dueIds(cache)).toEqual(['entry-0', 'entry-1']);
    cache.applyBundles(bundles([a, root], intermediate));
    expect(await dueIds(cache)).toEqual([]);
    expect(checks()).toBe(6);
  });

  it('lets the event loop turn between checks of many SVIDs, and not at all when none needs one', async () => {
    const { cache, checks } = newCache(60);
    cache.applyBundles(bundles([a], a));
    await issue(
      cache,
      a,
      Array.from({ length: 60 }, (_, i) => i),
    );
    expect(checks()).toBe(60);
    // A new root beside A: every SVID is checked against the new state.
    cache.applyBundles(bundles([a, b], a));
    let turned = false;
    setImmediate(() => {
      turned = true;
    });
    expect(await dueIds(cache)).toEqual([]);
    expect(checks()).toBe(120);
    expect(turned).toBe(true);

    turned = false;
    setImmediate(() => {
      turned = true;
    });
    expect(await dueIds(cache)).toEqual([]);
    expect(turned).toBe(false);
    expect(checks()).toBe(120);
  });
});

describe('SvidCache.storeSvids: a batch stored over several turns of the event loop', () => {
  let a: Ca;

  beforeAll(async () => {
    a = await newCa('store');
  });

  it('stores a batch larger than a slice whole, each with its own chain and key, and lets the loop turn', async () => {
    const { cache } = newCache(35);
    cache.applyBundles(bundles([a], a));
    const answered = await issued(
      a,
      Array.from({ length: 35 }, (_, i) => i),
    );
    let turned = false;
    setImmediate(() => {
      turned = true;
    });
    await cache.storeSvids(answered);
    expect(turned).toBe(true);
    expect(cache.svidCount).toBe(35);
    for (const [i, item] of answered.entries()) {
      const material = served(cache, i);
      expect(material?.spiffeId.toString()).toBe(`spiffe://${TD}/w/${i}`);
      expect(material?.chainDer).toEqual(item.chain);
      expect(Buffer.from(material?.keyPkcs8Der ?? [])).toEqual(
        item.key.export({ format: 'der', type: 'pkcs8' }),
      );
    }
    // Stored under the active authority, so nothing is due.
    expect(await dueIds(cache)).toEqual([]);
  });

  it('rejects at a leaf that does not parse, keeping the SVIDs before it and storing none after', async () => {
    const { cache } = newCache(30);
    cache.applyBundles(bundles([a], a));
    const answered = await issued(
      a,
      Array.from({ length: 30 }, (_, i) => i),
    );
    const broken = answered[15];
    if (broken === undefined) throw new Error('no SVID 15');
    broken.chain = [new Uint8Array([0x30, 0x03, 0x02, 0x01, 0x00])];
    await expect(cache.storeSvids(answered)).rejects.toThrow();
    expect(cache.svidCount).toBe(15);
    expect(served(cache, 14)).toBeDefined();
    expect(served(cache, 15)).toBeUndefined();
    expect(served(cache, 16)).toBeUndefined();
  });

  it('stores nothing more once the node is held untrusted while it yielded', async () => {
    const { cache } = newCache(30);
    cache.applyBundles(bundles([a], a));
    const answered = await issued(
      a,
      Array.from({ length: 30 }, (_, i) => i),
    );
    setImmediate(() => cache.suspend());
    await cache.storeSvids(answered);
    expect(cache.suspended).toBe(true);
    expect(cache.svidCount).toBe(0);
  });
});

describe("SvidCache: each SVID's validity, read once from its leaf", () => {
  it('reports the notBefore and the soonest notAfter of the SVIDs it serves, as their certificates say', async () => {
    const ca = await newCa('v');
    const { cache } = newCache(3);
    cache.applyBundles(bundles([ca], ca));
    // Whole seconds: a certificate's times carry no more.
    const base = Math.floor(Date.now() / 1000) * 1000;
    const notBefore = (i: number) => new Date(base - (i + 1) * 60_000);
    const lifetimes = [7200, 1800, 3600];
    const notAfter = (i: number) => new Date(base + (lifetimes[i] ?? 0) * 1000);
    await issue(cache, ca, [0, 1, 2], (i) => ({ notBefore: notBefore(i), notAfter: notAfter(i) }));

    const { served, unserved } = cache.validity(now());
    expect(unserved).toBe(0);
    expect(served.map((s) => s.notBefore).sort()).toEqual(
      [0, 1, 2].map((i) => notBefore(i).getTime() / 1000).sort(),
    );
    expect(cache.soonestExpiryMs(base)).toBe(notAfter(1).getTime());
    // Past the first one's end, the next one's.
    expect(cache.soonestExpiryMs(notAfter(1).getTime())).toBe(notAfter(2).getTime());
    expect(cache.soonestExpiryMs(notAfter(0).getTime())).toBeUndefined();
  });
});

describe('SvidCache.applyBundles: a federated bundle the agent cannot use', () => {
  /** A JWT-only bundle document of `td` with one RSA key of `bits`. */
  const jwtBundle = (bits: number, kid: string) =>
    JSON.stringify({
      keys: [
        {
          ...newKeyPair('rsa', { modulusLength: bits }).publicKey.export({ format: 'jwk' }),
          kid,
          use: 'jwt-svid',
        },
      ],
    });
  const weak = jwtBundle(1024, 'weak');
  const strong = jwtBundle(2048, 'strong');
  let ca: Ca;
  beforeAll(async () => {
    ca = await newCa('own');
  });

  /** A cache with entry 0, federating with partner.org and other.org, and its SVID. */
  async function federatingCache(): Promise<SvidCache> {
    const cache = new SvidCache({
      trustDomain: TD,
      attestors: [],
      bootstrapRoots: [],
      mintJwt: () => Promise.reject(new Error('not used')),
    });
    cache.applyEntries({
      full: true,
      entries: [{ ...entryMessage(0), federates_with: ['other.org', 'partner.org'] }],
      deletedIds: [],
      cursor: { epoch: 'e', revision: 1, scope: 's' },
      pages: 1,
    });
    await issue(cache, ca, [0]);
    return cache;
  }
  const federatedTo = (cache: SvidCache) =>
    cache
      .identities(['unix:uid:1000'])
      .federatedBundles.map((b) => [b.trustDomain.name, b.jwtAuthorities.size]);

  it('leaves it out and reports it once per document; the own bundle and the other federated ones apply', async () => {
    const cache = await federatingCache();
    const refusals: [string, string, string][] = [];
    const refused = (td: string, error: { code: string; message: string }) =>
      refusals.push([td, error.code, error.message]);
    const answer = (partner: string) => ({
      ...bundles([ca], ca),
      federated: [
        { trust_domain: 'other.org', document: strong },
        { trust_domain: 'partner.org', document: partner },
      ],
    });

    expect(cache.refusedFederatedBundles).toBe(0);
    expect(cache.applyBundles(answer(weak), refused)).toBe(true);
    expect(cache.refusedFederatedBundles).toBe(1);
    expect(refusals).toEqual([
      [
        'partner.org',
        'ERR_BUNDLE_WEAK_KEY',
        expect.stringMatching(/RSA key of 1024 bits, fewer than the 2048/),
      ],
    ]);
    expect(federatedTo(cache)).toEqual([['other.org', 1]]);
    expect(cache.identities(['unix:uid:1000']).bundle.x509Authorities.map((c) => c.raw)).toEqual([
      ca.cert.raw,
    ]);
    expect(served(cache, 0)).toBeDefined();

    // The same document again: no change, not reported again.
    expect(cache.applyBundles(answer(weak), refused)).toBe(false);
    expect(refusals).toHaveLength(1);
    // Another refused document is reported; a usable one is applied.
    expect(cache.applyBundles(answer(jwtBundle(1024, 'weak-2')), refused)).toBe(true);
    expect(refusals.map(([td]) => td)).toEqual(['partner.org', 'partner.org']);
    expect(cache.applyBundles(answer(strong), refused)).toBe(true);
    expect(cache.refusedFederatedBundles).toBe(0);
    expect(federatedTo(cache)).toEqual([
      ['other.org', 1],
      ['partner.org', 1],
    ]);
    // Refused after a usable one: the usable one is not kept, and the refusal is reported.
    expect(cache.applyBundles(answer(weak), refused)).toBe(true);
    expect(federatedTo(cache)).toEqual([['other.org', 1]]);
    expect(refusals).toHaveLength(3);
  });

  it('a persisted cache holding one is restored without it', async () => {
    const cache = await federatingCache();
    const snapshot = cache.snapshot();
    const restored = await federatingCache();
    const outcome = restored.restore(
      {
        bundle: bundles([ca], ca).bundle,
        federated: [
          { trust_domain: 'other.org', document: strong },
          { trust_domain: 'partner.org', document: weak },
        ],
        entries: [...snapshot.entries],
        svids: [...snapshot.svids],
      },
      [ca.cert],
      now(),
    );
    expect(outcome).toMatchObject({ entries: 1, svids: 1 });
    expect(federatedTo(restored)).toEqual([['other.org', 1]]);
  });
});
