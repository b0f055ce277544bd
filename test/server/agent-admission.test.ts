import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { openMemoryKeyManager } from '../../src/hsm/index.js';
import { authenticateAgent } from '../../src/server/agentapi/admission.js';
import { CertificateAuthority } from '../../src/server/ca/authority.js';
import type { Datastore } from '../../src/server/datastore/index.js';
import { openSqliteDatastore } from '../../src/server/datastore/index.js';
import { SpiffeId } from '../../src/spiffe/index.js';
import { newKeyPair } from '../../src/spiffe/new-key-pair.js';

const H = 3600;
const T0 = 1_800_000_000;
const AGENT = 'spiffe://example.org/agent/tpm/0123';

// Agent certificates are parsed once and kept by their bytes; these tests show that what is kept
// never stands in for the checks: each call verifies against the bundle and the clock of that call.
describe('authenticating an agent by its client certificate, parsed once', () => {
  let datastore: Datastore;
  const clock = { t: T0 * 1000, now: () => clock.t };
  let ca: CertificateAuthority;

  const mint = async (spiffeId = AGENT) => {
    const { publicKey } = newKeyPair('ec', { namedCurve: 'P-256' });
    const leaf = (await ca.mintX509Svid({ spiffeId: SpiffeId.parse(spiffeId), publicKey, ttl: H })).chain[0];
    if (!leaf) throw new Error('no leaf');
    return leaf;
  };
  const presenting = (raw: Buffer) => ({ getAuthContext: () => ({ sslPeerCertificate: { raw } }) });
  const authenticate = (raw: Buffer) => authenticateAgent(presenting(raw), ca, 'example.org', clock);
  const refusal = (raw: Buffer) => {
    try {
      authenticate(raw);
    } catch (error) {
      return error as { code: string; message: string };
    }
    throw new Error('the certificate was accepted');
  };

  beforeEach(async () => {
    clock.t = T0 * 1000;
    const dir = join(mkdtempSync(join(tmpdir(), 'ironroot-admission-')), 'data');
    datastore = (await openSqliteDatastore(dir, clock)).datastore;
    ca = await CertificateAuthority.open({
      trustDomain: 'example.org',
      keyManager: openMemoryKeyManager(),
      datastore,
      clock,
      logger: pino({ level: 'silent' }),
      caTtl: 24 * H,
      keyType: 'ec-p256',
      refreshHint: 300,
    });
  });
  afterEach(async () => {
    await datastore.close();
  });

  it('answers each certificate with its own agent ID and serial, on the first call and the next', async () => {
    const first = await mint();
    const second = await mint('spiffe://example.org/agent/tpm/4567');
    for (let call = 0; call < 2; call++) {
      expect(authenticate(Buffer.from(first.raw))).toEqual({ agentId: AGENT, serial: first.serialNumber });
      expect(authenticate(Buffer.from(second.raw))).toEqual({
        agentId: 'spiffe://example.org/agent/tpm/4567',
        serial: second.serialNumber,
      });
    }
    expect(first.serialNumber).not.toBe(second.serialNumber);
  });

  it('answers right for more agents than a small cache would hold, each presenting its SVID in turn', async () => {
    const agents = [];
    for (let i = 0; i < 1500; i++) {
      const id = `spiffe://example.org/agent/join_token/${i}`;
      agents.push({ id, leaf: await mint(id) });
    }
    for (let round = 0; round < 2; round++)
      for (const { id, leaf } of agents)
        expect(authenticate(Buffer.from(leaf.raw))).toEqual({ agentId: id, serial: leaf.serialNumber });
    // Kept among many, an expired certificate is still refused.
    clock.t = (T0 + H + 1) * 1000;
    expect(refusal(Buffer.from(agents[0]?.leaf.raw ?? [])).code).toBe('ERR_AGENT_UNAUTHENTICATED');
  });

  it('refuses a certificate it accepted before once it has expired', async () => {
    const leaf = Buffer.from((await mint()).raw);
    expect(authenticate(leaf).agentId).toBe(AGENT);
    clock.t = (T0 + H + 1) * 1000;
    const refused = refusal(leaf);
    expect(refused.code).toBe('ERR_AGENT_UNAUTHENTICATED');
    expect(refused.message).toMatch(/expired/);
  });

  it('refuses a certificate it accepted before once its CA is revoked, and accepts one from the new CA', async () => {
    const old = Buffer.from((await mint()).raw);
    expect(authenticate(old).agentId).toBe(AGENT);
    await ca.prepare('x509', 'test');
    await ca.activate('x509', 'test');
    // Still in the bundle while merely replaced.
    expect(authenticate(old).agentId).toBe(AGENT);
    const replaced = ca.slots.find((s) => s.authority === 'x509' && s.state === 'old');
    if (!replaced) throw new Error('no replaced CA');
    await ca.taint('x509', replaced.keyId, 'test');
    await ca.revoke('x509', replaced.keyId, 'test');
    const refused = refusal(old);
    expect(refused.code).toBe('ERR_AGENT_UNAUTHENTICATED');
    // The new CA has the same subject as the revoked one: its key is what fails.
    expect(refused.message).toMatch(/signature on the leaf certificate does not verify/);
    const renewed = await mint();
    expect(authenticate(Buffer.from(renewed.raw))).toEqual({ agentId: AGENT, serial: renewed.serialNumber });
  });

  it('judges a certificate it accepted again under another CA’s bundle or another trust domain', async () => {
    const leaf = Buffer.from((await mint()).raw);
    expect(authenticate(leaf).agentId).toBe(AGENT);
    const other = await CertificateAuthority.open({
      trustDomain: 'example.org',
      keyManager: openMemoryKeyManager(),
      datastore: (
        await openSqliteDatastore(join(mkdtempSync(join(tmpdir(), 'ironroot-other-')), 'data'), clock)
      ).datastore,
      clock,
      logger: pino({ level: 'silent' }),
      caTtl: 24 * H,
      keyType: 'ec-p256',
      refreshHint: 300,
    });
    expect(() => authenticateAgent(presenting(leaf), other, 'example.org', clock)).toThrow(
      /not a valid agent SVID \(the signature on the leaf certificate does not verify/,
    );
    expect(() => authenticateAgent(presenting(leaf), ca, 'other.org', clock)).toThrow(
      /spiffe:\/\/example\.org\/agent\/tpm\/0123 is not an agent of other\.org/,
    );
    expect(authenticate(leaf).agentId).toBe(AGENT);
  });

  it('refuses a certificate it accepted before while the clock is set back before its notBefore', async () => {
    const leaf = Buffer.from((await mint()).raw);
    expect(authenticate(leaf).agentId).toBe(AGENT);
    clock.t = (T0 - 60) * 1000;
    expect(refusal(leaf).message).toMatch(/leaf certificate is not valid until/);
    clock.t = T0 * 1000;
    expect(authenticate(leaf).agentId).toBe(AGENT);
  });

  it('refuses an SVID that is not an agent’s, however often it is presented', async () => {
    const workload = Buffer.from((await mint('spiffe://example.org/workload')).raw);
    for (let call = 0; call < 2; call++) {
      const refused = refusal(workload);
      expect(refused.code).toBe('ERR_AGENT_UNAUTHENTICATED');
      expect(refused.message).toMatch(/not an agent of example\.org/);
    }
  });
});
