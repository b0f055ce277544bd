import { randomBytes } from 'node:crypto';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { TpmAttestor } from '../../src/agent/attestor/tpm.js';
import type { ServerConfigInput } from '../../src/server/config/schema.js';
import {
  EV,
  ekPublicKeyHash,
  marshalTpm2bPublic,
  parseTpm2bPublic,
  Tpm,
  type TpmtPublic,
  withEk,
} from '../../src/tpm/index.js';
import { type Swtpm, startSwtpm } from '../helpers/swtpm.js';
import { agileLog } from '../tpm/eventlog/build-log.js';
import { type EvilOutcome, evilAttest, type Tamper } from './evil-agent.js';
import { ekCaDir, startAttestServer, TD, type TestServer } from './harness.js';

let swtpm: Swtpm;
let other: Swtpm;
let caDir: string;
let agentId: string;
const servers: TestServer[] = [];

beforeAll(async () => {
  [swtpm, other] = await Promise.all([startSwtpm(), startSwtpm()]);
  caDir = ekCaDir(swtpm);
  const tpm = await Tpm.open(swtpm.tcti);
  try {
    agentId = `spiffe://${TD}/agent/tpm/${await withEk(tpm, 'rsa2048', async (ek) => ekPublicKeyHash(ek.public.area))}`;
  } finally {
    await tpm.close();
  }
});

afterEach(async () => {
  for (const server of servers.splice(0)) await server.stop();
});

afterAll(async () => {
  await swtpm?.stop();
  await other?.stop();
});

async function server(
  tpm: Partial<NonNullable<ServerConfigInput['tpm_attestation']>> = {},
): Promise<TestServer> {
  const started = await startAttestServer({
    tpm_attestation: { measured_boot: 'none', ek_ca_dir: caDir, ...tpm },
  });
  servers.push(started);
  return started;
}

/** The refusal carries the code, the server logged a decision naming it, and nothing was recorded. */
async function expectRefused(s: TestServer, outcome: EvilOutcome, code: string): Promise<void> {
  expect(outcome.result).toBeUndefined();
  expect(outcome.error?.code).toBe(code);
  expect(s.logs.decisions().some((d) => d.result === 'refused' && d.reason === code)).toBe(true);
  expect(s.logs.decisions().some((d) => d.result === 'ok')).toBe(false);
  expect(await s.server.datastore.listNodes()).toEqual([]);
}

function withAttributes(publicBlob: Uint8Array, change: Partial<TpmtPublic['objectAttributes']>): Buffer {
  const parsed = parseTpm2bPublic(publicBlob);
  const area = {
    ...parsed.area,
    objectAttributes: { ...parsed.area.objectAttributes, ...change },
  } as TpmtPublic;
  return Buffer.from(marshalTpm2bPublic(area));
}

describe('the server refuses, by name, and records nothing', () => {
  it('an EK certificate from an untrusted CA', async () => {
    const s = await server({ ek_ca_dir: ekCaDir(other) });
    await expectRefused(s, await evilAttest(s, swtpm.tcti), 'ERR_ATTEST_EK_UNTRUSTED');
  });

  it('an EK certificate whose key is not the EK public area', async () => {
    const s = await server();
    const p384 = await new TpmAttestor({
      tcti: swtpm.tcti,
      ek: 'ecc-p384-high',
      eventLogPath: 'none',
    }).evidence();
    const tamper: Tamper = {
      evidence: (e) => ({ ...e, ek_certificates: p384.evidence.ek_certificates }),
    };
    await expectRefused(s, await evilAttest(s, swtpm.tcti, tamper), 'ERR_ATTEST_EK_MISMATCH');
  });

  it('an EK hash that is not on the allow-list', async () => {
    const s = await startAttestServer({
      tpm_attestation: { measured_boot: 'none', ek_hashes: ['0'.repeat(64)] },
    });
    servers.push(s);
    await expectRefused(s, await evilAttest(s, swtpm.tcti), 'ERR_ATTEST_EK_NOT_ALLOWED');
  });

  it.each([
    ['with decrypt', { decrypt: true }],
    ['without restricted', { restricted: false }],
    ['without fixedTPM', { fixedTPM: false }],
  ])('an AK %s', async (_name, change) => {
    const s = await server();
    const tamper: Tamper = { evidence: (e) => ({ ...e, ak_public: withAttributes(e.ak_public, change) }) };
    await expectRefused(s, await evilAttest(s, swtpm.tcti, tamper), 'ERR_ATTEST_AK_ATTRIBUTES');
  });

  it('an AK from another TPM, which cannot recover the activation secret', async () => {
    const s = await server();
    const foreign = new TpmAttestor({ tcti: other.tcti, ek: 'rsa2048', eventLogPath: 'none' });
    const stranger = await foreign.evidence();
    const tamper: Tamper = {
      evidence: (e) => ({ ...e, ak_public: stranger.evidence.ak_public }),
      // The other TPM cannot activate a credential made for this EK; it quotes with its own AK and
      // offers a guess for the secret.
      replaceAnswer: async (challenge) => ({
        ...(await foreign.answer(stranger.ak, { ...challenge, credentialBlob: new Uint8Array() })),
        activated_secret: randomBytes(32),
      }),
    };
    await expectRefused(s, await evilAttest(s, swtpm.tcti, tamper), 'ERR_ATTEST_SECRET_MISMATCH');
  });

  it('a quote replayed from an earlier handshake', async () => {
    const s = await server();
    const first = await evilAttest(s, swtpm.tcti);
    expect(first.result?.spiffe_id).toBe(agentId);
    const earlier = first.answer;
    if (earlier === undefined || first.evidence === undefined || first.ak === undefined)
      throw new Error('the first handshake sent no answer');
    const replay = await evilAttest(
      s,
      swtpm.tcti,
      { answer: (honest) => ({ ...earlier, activated_secret: honest.activated_secret }) },
      { reuse: { evidence: first.evidence, ak: first.ak } },
    );
    expect(replay.error?.code).toBe('ERR_ATTEST_NONCE_REPLAYED');
    expect(s.logs.decisions().some((d) => d.reason === 'ERR_ATTEST_NONCE_REPLAYED')).toBe(true);
    expect((await s.server.datastore.getNode(agentId))?.attestationCount).toBe(1);
  });

  it('an answer after the nonce expired', async () => {
    const s = await server({ nonce_ttl: '60s' });
    const tamper: Tamper = { beforeAnswer: () => s.clock.advance(61) };
    await expectRefused(s, await evilAttest(s, swtpm.tcti, tamper), 'ERR_ATTEST_NONCE_EXPIRED');
  });

  it('an agent that answers only after nonce_ttl, in real time, with ERR_ATTEST_NONCE_EXPIRED', async () => {
    const s = await server({ nonce_ttl: '1s' });
    // Real time, not the fake clock: the server stops waiting for the answer when the nonce expires.
    const tamper: Tamper = { beforeAnswer: () => new Promise((resolve) => setTimeout(resolve, 1500)) };
    const outcome = await evilAttest(s, swtpm.tcti, tamper);
    await expectRefused(s, outcome, 'ERR_ATTEST_NONCE_EXPIRED');
    expect(outcome.error?.message).toContain('nonce lifetime 1s');
  });

  it('before the EK is known, logging the peer address and no empty agent_id', async () => {
    const s = await server({ ek_ca_dir: ekCaDir(other) });
    await expectRefused(s, await evilAttest(s, swtpm.tcti), 'ERR_ATTEST_EK_UNTRUSTED');
    const decision = s.logs.decisions().find((d) => d.reason === 'ERR_ATTEST_EK_UNTRUSTED');
    expect(decision).toMatchObject({ peer: '127.0.0.1', attestation_method: 'tpm' });
    expect(decision).not.toHaveProperty('agent_id');
  });

  it('a quote signed by another key', async () => {
    const s = await server();
    const attestor = new TpmAttestor({ tcti: swtpm.tcti, ek: 'rsa2048', eventLogPath: 'none' });
    const second = await attestor.evidence();
    const tamper: Tamper = {
      answer: async (honest, challenge) => {
        const forged = await attestor.answer(second.ak, { ...challenge, credentialBlob: new Uint8Array() });
        return { ...honest, quote: forged.quote, signature: forged.signature };
      },
    };
    await expectRefused(s, await evilAttest(s, swtpm.tcti, tamper), 'ERR_ATTEST_QUOTE_SIGNATURE');
  });

  it('PCR values that do not hash to the quoted digest', async () => {
    const s = await server();
    const tamper: Tamper = {
      answer: (honest) => ({
        ...honest,
        pcr_values: honest.pcr_values.map((v, i) => (i === 0 ? Buffer.alloc(v.length, 0xaa) : v)),
      }),
    };
    await expectRefused(s, await evilAttest(s, swtpm.tcti, tamper), 'ERR_ATTEST_PCR_DIGEST');
  });

  it('a PCR value the policy does not accept', async () => {
    const s = await server({ pcr_values: { '0': ['ff'.repeat(32)] } });
    await expectRefused(s, await evilAttest(s, swtpm.tcti), 'ERR_ATTEST_PCR_POLICY');
  });

  it('an event log that does not replay to the quoted PCRs', async () => {
    const s = await server();
    const log = agileLog(['sha256'], [{ pcr: 0, type: EV.SEPARATOR, data: Buffer.alloc(4) }]);
    const tamper: Tamper = { answer: (honest) => ({ ...honest, event_log: log }) };
    await expectRefused(s, await evilAttest(s, swtpm.tcti, tamper), 'ERR_ATTEST_EVENTLOG_REPLAY');
  });

  it('no event log when the policy requires one', async () => {
    const s = await server({ require_event_log: true });
    await expectRefused(s, await evilAttest(s, swtpm.tcti), 'ERR_ATTEST_EVENTLOG_REQUIRED');
  });

  it('a banned node, until it is unbanned', async () => {
    const s = await server();
    expect((await evilAttest(s, swtpm.tcti)).result?.spiffe_id).toBe(agentId);
    await s.registration.banAgent({ spiffe_id: agentId, ek_hash: '' }, 'test');
    const banned = await evilAttest(s, swtpm.tcti);
    expect(banned.error?.code).toBe('ERR_ATTEST_BANNED');
    expect(s.logs.decisions().some((d) => d.reason === 'ERR_ATTEST_BANNED' && d.agent_id === agentId)).toBe(
      true,
    );
    expect((await s.server.datastore.getNode(agentId))?.attestationCount).toBe(1);
    await s.registration.unbanAgent({ spiffe_id: agentId }, 'test');
    expect((await evilAttest(s, swtpm.tcti)).result?.spiffe_id).toBe(agentId);
  });

  it('attestation beyond the per-address rate limit', async () => {
    const s = await startAttestServer({
      tpm_attestation: { measured_boot: 'none', ek_ca_dir: caDir },
      attestation_rate_limit: { per_second: 0.001, burst: 1 },
    });
    servers.push(s);
    const tamper: Tamper = { evidence: (e) => ({ ...e, ek_public: Buffer.alloc(0) }) };
    expect((await evilAttest(s, swtpm.tcti, tamper)).error?.code).toBe('ERR_ATTEST_BAD_REQUEST');
    const limited = await evilAttest(s, swtpm.tcti);
    expect(limited.error?.code).toBe('ERR_ATTEST_RATE_LIMITED');
    expect(await s.server.datastore.listNodes()).toEqual([]);
  });
});
