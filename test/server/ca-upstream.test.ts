import { execFile } from 'node:child_process';

import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { pino } from 'pino';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { openMemoryKeyManager } from '../../src/hsm/index.js';
import { CertificateAuthority } from '../../src/server/ca/authority.js';
import { loadUpstreamAuthority } from '../../src/server/ca/upstream.js';
import type { Datastore } from '../../src/server/datastore/index.js';
import { openSqliteDatastore } from '../../src/server/datastore/index.js';
import { createKeySigner, mintX509Ca, SpiffeId, TrustDomain } from '../../src/spiffe/index.js';
import { newKeyPair } from '../../src/spiffe/new-key-pair.js';

const run = promisify(execFile);
const H = 3600;

describe('CA under an upstream authority from disk', () => {
  let dir: string;
  let datastore: Datastore;
  const clock = { now: () => Date.now() };

  beforeEach(async () => {
    dir = mkdtempSync(join(tmpdir(), 'ironroot-upstream-'));
    datastore = (await openSqliteDatastore(join(dir, 'data'), clock)).datastore;
  });
  afterEach(async () => {
    await datastore.close();
  });

  async function writeUpstream(): Promise<{ certFile: string; keyFile: string; rootPem: string }> {
    const { privateKey } = newKeyPair('ec', { namedCurve: 'P-256' });
    const signer = createKeySigner(privateKey);
    const now = Date.now();
    const root = await mintX509Ca(
      {
        trustDomain: TrustDomain.parse('example.org'),
        publicKey: signer.publicKey,
        notBefore: new Date(now - 60_000),
        notAfter: new Date(now + 30 * 24 * H * 1000),
        subject: 'O=Upstream, CN=upstream root',
      },
      signer,
    );
    const certFile = join(dir, 'upstream.pem');
    const keyFile = join(dir, 'upstream.key');
    writeFileSync(certFile, root.toString());
    writeFileSync(keyFile, privateKey.export({ type: 'pkcs8', format: 'pem' }), { mode: 0o600 });
    return { certFile, keyFile, rootPem: root.toString() };
  }

  it('signs its CA with the upstream key, publishes the upstream root, and chains SVIDs to it (openssl)', async () => {
    const { certFile, keyFile, rootPem } = await writeUpstream();
    const ca = await CertificateAuthority.open({
      trustDomain: 'example.org',
      keyManager: openMemoryKeyManager(),
      datastore,
      clock,
      logger: pino({ level: 'silent' }),
      caTtl: 24 * H,
      keyType: 'ec-p256',
      refreshHint: 300,
      upstream: loadUpstreamAuthority(certFile, keyFile),
    });
    expect(ca.bundle().x509Authorities.map((c) => c.toString())).toEqual([rootPem]);
    const { publicKey } = newKeyPair('ec', { namedCurve: 'P-256' });
    const { chain, chainDer } = await ca.mintX509Svid({
      spiffeId: SpiffeId.parse('spiffe://example.org/w'),
      publicKey,
      ttl: H,
    });
    expect(chain).toHaveLength(2);
    // The DER the agent API sends is the same chain, intermediate included.
    expect(chainDer.map((d) => Buffer.from(d).toString('hex'))).toEqual(
      chain.map((c) => Buffer.from(c.raw).toString('hex')),
    );
    const [leaf, intermediate] = chain;
    writeFileSync(join(dir, 'leaf.pem'), leaf?.toString() ?? '');
    writeFileSync(join(dir, 'intermediate.pem'), intermediate?.toString() ?? '');
    writeFileSync(join(dir, 'root.pem'), rootPem);
    const { stdout } = await run('openssl', [
      'verify',
      '-CAfile',
      join(dir, 'root.pem'),
      '-untrusted',
      join(dir, 'intermediate.pem'),
      join(dir, 'leaf.pem'),
    ]);
    expect(stdout.trim()).toBe(`${join(dir, 'leaf.pem')}: OK`);
    // Without the intermediate the leaf does not verify: the CA really is below the upstream root.
    await expect(
      run('openssl', ['verify', '-CAfile', join(dir, 'root.pem'), join(dir, 'leaf.pem')]),
    ).rejects.toThrow();
  });

  it('republishes with a new spiffe_sequence when the upstream root changed across a restart', async () => {
    const keys = openMemoryKeyManager();
    const open = async () => {
      const { certFile, keyFile, rootPem } = await writeUpstream();
      const ca = await CertificateAuthority.open({
        trustDomain: 'example.org',
        keyManager: keys,
        datastore,
        clock,
        logger: pino({ level: 'silent' }),
        caTtl: 24 * H,
        keyType: 'ec-p256',
        refreshHint: 300,
        upstream: loadUpstreamAuthority(certFile, keyFile),
      });
      return { ca, rootPem };
    };
    const first = await open();
    const firstSequence = first.ca.bundle().sequenceNumber ?? 0n;
    const second = await open();
    expect(second.rootPem).not.toBe(first.rootPem);
    expect(second.ca.bundle().x509Authorities.map((c) => c.toString())).toEqual([second.rootPem]);
    expect(second.ca.bundle().sequenceNumber).toBe(firstSequence + 1n);
    expect((await datastore.getBundle('example.org'))?.sequence).toBe(Number(firstSequence + 1n));
  });

  it('refuses a key that does not belong to the upstream certificate', async () => {
    const { certFile } = await writeUpstream();
    const other = join(dir, 'other.key');
    writeFileSync(
      other,
      newKeyPair('ec', { namedCurve: 'P-256' }).privateKey.export({ type: 'pkcs8', format: 'pem' }),
    );
    expect(() => loadUpstreamAuthority(certFile, other)).toThrow(
      `upstream_authority.key_file ${other} does not belong to the first certificate of ${certFile}`,
    );
  });
});
