import { createHash, type KeyObject, type X509Certificate } from 'node:crypto';
import { readFileSync, readlinkSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { type CacheObserver, SvidCache } from '../../src/agent/cache.js';
import { sha256OfFile, UnixAttestor } from '../../src/agent/workloadattestor/unix.js';
import type { EntryMessage } from '../../src/agent-api/proto.js';
import { mintJwtSvid, SpiffeId } from '../../src/spiffe/index.js';
import { WorkloadApiClient } from '../../src/workload-api/client.js';
import { type WorkloadApiLogger, WorkloadApiServer } from '../../src/workload-api/server.js';
import { openTempDir } from '../helpers/workload-api.js';
import { caExtensions, craft, leafExtensions, p256 } from '../helpers/x509.js';

// `unix:sha256` costs a stat of the executable on every attestation, even with its hash cached. The
// agent's cache leaves it out while no entry uses it, and attests again when one starts to. These
// tests serve this test process (the workload) from a real SvidCache with the real unix attestor,
// through a real WorkloadApiServer and client.

const TD = 'on-demand.example.org';
const uid = process.getuid?.() ?? -1;
/** The executable this process runs, and its SHA-256, as the attestor must find them. */
const exe = readlinkSync('/proc/self/exe');
const exeSha256 = createHash('sha256').update(readFileSync(exe)).digest('hex');
const WRONG_SHA256 = 'ab'.repeat(32);
const jwtSigner = p256().signer;

function entry(id: string, selectors: string[], revision = 1): EntryMessage {
  return {
    id,
    spiffe_id: `spiffe://${TD}/${id}`,
    parent_id: `spiffe://${TD}/node`,
    selectors,
    x509_svid_ttl: 3600,
    jwt_svid_ttl: 0,
    dns_names: [],
    federates_with: [],
    hint: '',
    revision_number: revision,
    created_at: Number(id.replace(/\D/g, '')) || 1,
    expires_at: 0,
  };
}

describe('unix:sha256 computed only while an entry uses it', () => {
  let ca: { cert: X509Certificate; key: KeyObject };
  const cleanups: Array<() => Promise<void> | void> = [];

  beforeAll(async () => {
    const { privateKey, publicKey } = p256();
    ca = {
      key: privateKey,
      cert: await craft({
        subject: 'CN=on-demand',
        publicKey,
        selfKey: privateKey,
        extensions: caExtensions(`spiffe://${TD}`),
      }),
    };
  });
  afterEach(async () => {
    for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
  });

  /** A cache holding `entries` (a sync's answer) with an SVID for each, served on a socket of its own. */
  async function serve(entries: EntryMessage[]) {
    const notComputed: string[] = [];
    const hashReads: number[] = [];
    const observer: CacheObserver = {
      lookup: () => {},
      rotated: () => {},
      caChecked: () => {},
      notComputed: (kind) => notComputed.push(kind),
    };
    const attestor = new UnixAttestor({
      // Counts real reads of the executable (a cache miss); the hash itself is still computed.
      hashFile: (file) => {
        hashReads.push(1);
        return sha256OfFile(file);
      },
    });
    const cache = new SvidCache({
      trustDomain: TD,
      attestors: [attestor],
      bootstrapRoots: [ca.cert],
      mintJwt: async (entryId, audience) => {
        const expiresAt = new Date(Date.now() + 600_000);
        const token = await mintJwtSvid(
          { spiffeId: SpiffeId.parse(`spiffe://${TD}/${entryId}`), audience, expiresAt, keyId: 'k1' },
          jwtSigner,
        );
        return { token, expiresAt: Math.floor(expiresAt.getTime() / 1000) };
      },
      observer,
    });
    const logged: Array<{ fields: Record<string, unknown>; message: string }> = [];
    const logger: WorkloadApiLogger = {
      debug: () => {},
      info: (fields, message) => logged.push({ fields, message }),
      warn: (fields, message) => logged.push({ fields, message }),
    };
    const dir = openTempDir('on-demand-');
    const server = await WorkloadApiServer.listen({
      provider: cache,
      socketPath: join(dir, 'api.sock'),
      logger,
    });
    const client = new WorkloadApiClient({ address: `unix://${server.socketPath}` });
    cleanups.push(async () => {
      client.close();
      await server.close();
      rmSync(dir, { recursive: true, force: true });
    });
    let revision = 1;
    /** Syncs `next` (the full entry list, as a full sync brings it), issues their SVIDs, tells the streams. */
    const sync = async (next: EntryMessage[]) => {
      revision++;
      cache.applyEntries({
        full: true,
        entries: next,
        deletedIds: [],
        cursor: { epoch: 'e', revision, scope: 's' },
        pages: 1,
      });
      const issued = [];
      for (const e of next) {
        const { privateKey, publicKey } = p256();
        const leaf = await craft({
          subject: '',
          publicKey,
          issuer: ca,
          extensions: leafExtensions(e.spiffe_id),
        });
        issued.push({
          entryId: e.id,
          entryRevision: e.revision_number,
          chain: [new Uint8Array(leaf.raw)],
          expiresAt: Math.floor(new Date(leaf.validTo).getTime() / 1000),
          key: privateKey,
        });
      }
      await cache.storeSvids(issued);
      cache.notify();
    };
    await sync(entries);
    const ids = async () => (await client.fetchX509Context()).svids.map((s) => s.svid.id.toString());
    return { cache, client, sync, ids, notComputed, hashReads, logged };
  }

  it('leaves unix:sha256 out while no entry uses it, and counts each attestation that did', async () => {
    const served = await serve([entry('uid1', [`unix:uid:${uid}`])]);
    expect(await served.ids()).toEqual([`spiffe://${TD}/uid1`]);
    expect(await served.ids()).toEqual([`spiffe://${TD}/uid1`]);
    expect(served.notComputed).toEqual(['unix:sha256', 'unix:sha256']);
    expect(served.hashReads).toHaveLength(0);
  });

  it('serves a workload matched by a unix:sha256 entry, computing the hash for it', async () => {
    const served = await serve([entry('hash1', [`unix:uid:${uid}`, `unix:sha256:${exeSha256}`])]);
    expect(await served.ids()).toEqual([`spiffe://${TD}/hash1`]);
    expect(served.notComputed).toEqual([]);
    expect(served.hashReads).toHaveLength(1);
  });

  it('does not match an entry with another hash, nor leave the hash out for it', async () => {
    const served = await serve([
      entry('uid1', [`unix:uid:${uid}`]),
      entry('wrong2', [`unix:uid:${uid}`, `unix:sha256:${WRONG_SHA256}`]),
    ]);
    expect(await served.ids()).toEqual([`spiffe://${TD}/uid1`]);
    expect(served.notComputed).toEqual([]);
    expect(served.hashReads).toHaveLength(1);
  });

  it('refuses a workload whose only entry has another hash, and logs its hash, not "not computed"', async () => {
    const served = await serve([entry('wrong1', [`unix:uid:${uid}`, `unix:sha256:${WRONG_SHA256}`])]);
    await expect(served.ids()).rejects.toThrow(/no identity/);
    const refusal = served.logged.find((l) => l.message === 'no identity for caller');
    expect(refusal?.fields.selectors).toContain(`unix:sha256:${exeSha256}`);
    expect(refusal?.fields).not.toHaveProperty('selectors_not_computed');
  });

  it('names unix:sha256 as not computed where it logs the selectors of a caller it refuses', async () => {
    const served = await serve([entry('other1', [`unix:uid:${uid + 1}`])]);
    await expect(served.ids()).rejects.toThrow(/no identity/);
    const refusal = served.logged.find((l) => l.message === 'no identity for caller');
    expect(refusal?.fields.selectors).toContain(`unix:uid:${uid}`);
    expect(refusal?.fields.selectors).not.toContainEqual(expect.stringMatching(/^unix:sha256:/));
    expect(refusal?.fields.selectors_not_computed).toEqual(['unix:sha256']);
  });

  it('attests an open stream again when a unix:sha256 entry arrives, and serves its SVID on that stream', async () => {
    const served = await serve([entry('uid1', [`unix:uid:${uid}`])]);
    const updates: string[][] = [];
    const stop = new AbortController();
    cleanups.push(() => stop.abort());
    const watching = served.client.watchX509Context(
      { onUpdate: (context) => updates.push(context.svids.map((s) => s.svid.id.toString())) },
      stop.signal,
    );
    await expect.poll(() => updates.length).toBe(1);
    expect(updates[0]).toEqual([`spiffe://${TD}/uid1`]);
    expect(served.notComputed).toEqual(['unix:sha256']);

    await served.sync([
      entry('uid1', [`unix:uid:${uid}`]),
      entry('wrong2', [`unix:uid:${uid}`, `unix:sha256:${WRONG_SHA256}`]),
      entry('hash3', [`unix:uid:${uid}`, `unix:sha256:${exeSha256}`]),
    ]);
    await expect.poll(() => updates.length).toBe(2);
    expect(updates[1]).toEqual([`spiffe://${TD}/uid1`, `spiffe://${TD}/hash3`]);
    // Attested once more, this time with the hash.
    expect(served.notComputed).toEqual(['unix:sha256']);
    expect(served.hashReads).toHaveLength(1);
    stop.abort();
    await watching;
  });

  it('computes unix:sha256 for entries a restarted agent restored from its cache file', async () => {
    const cache = new SvidCache({
      trustDomain: TD,
      attestors: [new UnixAttestor()],
      bootstrapRoots: [ca.cert],
      mintJwt: () => Promise.reject(new Error('not used')),
    });
    const caller = { pid: process.pid, uid, gid: process.getgid?.() ?? -1 };
    expect(await cache.attest(caller)).not.toContainEqual(expect.stringMatching(/^unix:sha256:/));
    cache.restore(
      {
        bundle: '',
        federated: [],
        entries: [entry('hash1', [`unix:uid:${uid}`, `unix:sha256:${exeSha256}`])],
        svids: [],
      },
      [ca.cert],
      Math.floor(Date.now() / 1000),
    );
    const selectors = await cache.attest(caller);
    expect(selectors).toContain(`unix:sha256:${exeSha256}`);
    expect(cache.notComputed(selectors)).toEqual([]);
  });

  it('answers FetchJWTSVID for an identity only a unix:sha256 entry grants', async () => {
    const served = await serve([entry('hash1', [`unix:uid:${uid}`, `unix:sha256:${exeSha256}`])]);
    const svids = await served.client.fetchJwtSvids({ audience: ['on-demand'] });
    expect(svids.map((s) => s.svid.id.toString())).toEqual([`spiffe://${TD}/hash1`]);
  });
});
