import { type KeyObject, X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { type ServiceError, status } from '@grpc/grpc-js';
import { pino } from 'pino';
import { Counter, Registry } from 'prom-client';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { TpmAttestor } from '../../src/agent/attestor/tpm.js';
import type { StoredAk } from '../../src/agent/store.js';
import type { TpmEvidenceMessage } from '../../src/agent-api/proto.js';
import { MAX_AGENT_MESSAGE_BYTES } from '../../src/server/agentapi/server.js';
import { EkWorkerPool } from '../../src/server/nodeattestor/ek-pool.js';
import { AttestationError } from '../../src/server/nodeattestor/errors.js';
import { MAX_EK_CERTIFICATE_BYTES } from '../../src/server/nodeattestor/tpm.js';
import * as px from '../../src/spiffe/peculiar.js';
import { ekPublicKeyHash, MAX_PRESENTED_CERTIFICATES, parseTpm2bPublic } from '../../src/tpm/index.js';
import { cli } from '../helpers/server.js';
import { type Swtpm, startSwtpm } from '../helpers/swtpm.js';
import { craft, p256 } from '../helpers/x509.js';
import { type EvilOutcome, evilAttest, type Tamper } from './evil-agent.js';
import {
  ekCaDir,
  healthy,
  LogSink,
  startAttestServer,
  startTestAgent,
  TD,
  type TestServer,
  until,
} from './harness.js';

/**
 * EK certificate evidence from a peer with no TPM and no client certificate: what it may cost the
 * server, and how the server names its refusal. The server is the real one, in this process, so a
 * request that held its thread would hold the admin socket and every other agent too.
 */

/**
 * Calls of the EK certificate parser and chain builder on this thread, the server's main thread.
 * The EK workers run the built module (dist/), which this count does not see.
 */
const mainThread = vi.hoisted(() => ({ parsed: 0, chains: 0 }));
vi.mock('../../src/tpm/index.js', async (importOriginal) => {
  const tpm = await importOriginal<typeof import('../../src/tpm/index.js')>();
  return {
    ...tpm,
    parseEkCertificate: (...args: Parameters<typeof tpm.parseEkCertificate>) => {
      mainThread.parsed += 1;
      return tpm.parseEkCertificate(...args);
    },
    verifyEkCertificateChain: (...args: Parameters<typeof tpm.verifyEkCertificateChain>) => {
      mainThread.chains += 1;
      return tpm.verifyEkCertificateChain(...args);
    },
  };
});

let swtpm: Swtpm;
let server: TestServer;
/** Real evidence from the swtpm, sent with its certificates swapped for the hostile ones. */
let real: { evidence: TpmEvidenceMessage; ak: StoredAk };
let ekKey: KeyObject;
let agentId: string;

/** The name on swtpm's EK certificates' issuer: hostile CAs take it, so they sit beside the real one. */
const ISSUER = 'CN=swtpm-localca';

beforeAll(async () => {
  swtpm = await startSwtpm();
  server = await startAttestServer({
    tpm_attestation: { measured_boot: 'none', ek_ca_dir: ekCaDir(swtpm) },
    // Every peer here is 127.0.0.1; the honest agent must not be limited for the hostile requests.
    attestation_rate_limit: { per_second: 1000, burst: 1000 },
  });
  real = await new TpmAttestor({ tcti: swtpm.tcti, ek: 'rsa2048', eventLogPath: 'none' }).evidence();
  const [ekCert] = real.evidence.ek_certificates;
  if (ekCert === undefined) throw new Error('the swtpm has no RSA EK certificate');
  ekKey = new X509Certificate(ekCert).publicKey;
  agentId = `spiffe://${TD}/agent/tpm/${ekPublicKeyHash(parseTpm2bPublic(real.evidence.ek_public).area)}`;
});

afterAll(async () => {
  await server?.stop();
  await swtpm?.stop();
});

function certificates(certs: readonly (X509Certificate | Buffer)[]): Tamper {
  return {
    evidence: (e) => ({
      ...e,
      ek_certificates: certs.map((c) => (c instanceof X509Certificate ? c.raw : c)),
    }),
  };
}

function send(certs: readonly (X509Certificate | Buffer)[]): Promise<EvilOutcome> {
  return evilAttest(server, swtpm.tcti, certificates(certs), { reuse: real });
}

/** A self-signed CA with the EK issuer's name. */
function hostileCa(key: { privateKey: KeyObject; publicKey: KeyObject }): Promise<X509Certificate> {
  return craft({
    subject: ISSUER,
    publicKey: key.publicKey,
    selfKey: key.privateKey,
    extensions: [
      new px.BasicConstraintsExtension(true, undefined, true),
      new px.KeyUsagesExtension(px.KeyUsageFlags.keyCertSign, true),
    ],
  });
}

/** A certificate for the swtpm's real EK key, issued by `issuer`. */
function forgedEkCertificate(
  issuer: { cert: X509Certificate; key: KeyObject },
  extensions: px.Extension[] = [],
): Promise<X509Certificate> {
  return craft({ subject: 'CN=forged-ek', publicKey: ekKey, issuer, extensions });
}

/** The agent was told `code`, the server logged the refusal at warn, and nothing was recorded for it. */
function expectRefused(outcome: EvilOutcome, code: string): void {
  expect(outcome.result).toBeUndefined();
  expect(outcome.error?.code, outcome.error?.message).toBe(code);
  const logged = server.logs.decisions().filter((d) => d.reason === code);
  expect(logged.length).toBeGreaterThan(0);
  expect(logged.every((d) => d.level === 'warn' && d.result === 'refused')).toBe(true);
}

function errorLines(): Record<string, unknown>[] {
  return server.logs.lines.filter((l) => l.level === 'error' || l.level === 'fatal');
}

/** ironroot_ek_worker_jobs_total by result, from the server's /metrics. */
async function workerJobs(): Promise<Record<string, number>> {
  const text = (await server.server.health.inject({ method: 'GET', url: '/metrics' })).body;
  return Object.fromEntries(
    [...text.matchAll(/^ironroot_ek_worker_jobs_total\{result="([^"]+)"\} (\d+)$/gm)].map((m) => [
      m[1],
      Number(m[2]),
    ]),
  );
}

describe('hostile EK certificate chains', () => {
  it('are refused by name, judged by the EK workers and not on the main thread, while an admin call and an honest agent are served', async () => {
    const key = p256();
    const evil = await hostileCa(key);
    const leaf = await forgedEkCertificate({ cert: evil, key: key.privateKey });
    // Distinct certificates with one name and one key: each issues every other one, and none is a
    // copy of another, so removing duplicates alone would not stop them.
    const sameKey = await Promise.all(Array.from({ length: 64 }, () => hostileCa(key)));
    const otherKeys = await Promise.all(
      Array.from({ length: MAX_PRESENTED_CERTIFICATES - 1 }, () => hostileCa(p256())),
    );
    const hostile: [string, (X509Certificate | Buffer)[], string][] = [
      [
        '64 copies of one CA',
        [leaf, ...Array.from({ length: 64 }, () => evil)],
        'ERR_ATTEST_EVIDENCE_TOO_LARGE',
      ],
      ['64 distinct CAs, one name and key', [leaf, ...sameKey], 'ERR_ATTEST_EVIDENCE_TOO_LARGE'],
      [
        `${MAX_PRESENTED_CERTIFICATES} distinct CAs, one name and key`,
        [leaf, ...sameKey.slice(0, MAX_PRESENTED_CERTIFICATES)],
        'ERR_ATTEST_EK_UNTRUSTED',
      ],
      [
        `${MAX_PRESENTED_CERTIFICATES} distinct CAs, one name, distinct keys`,
        [leaf, evil, ...otherKeys],
        'ERR_ATTEST_EK_UNTRUSTED',
      ],
    ];

    // All in flight at once, then the others: an admin call over the socket and a real agent.
    const refusals = Promise.all(hostile.map(([, certs]) => send(certs)));
    const listing = cli(['agent', 'list', '--admin-socket', server.adminSocket, '--output', 'json']);
    const agent = await startTestAgent(server, { tcti: swtpm.tcti });
    try {
      const attested = await until('the honest agent to attest', () => healthy(agent));
      expect(attested.spiffe_id).toBe(agentId);
    } finally {
      await agent.stop();
    }
    const listed = await listing;
    expect(listed.stderr).toBe('');
    expect(listed.code).toBe(0);

    const outcomes = await refusals;
    hostile.forEach(([name, , code], i) => {
      const outcome = outcomes[i];
      if (outcome === undefined) throw new Error(`no outcome for ${name}`);
      expectRefused(outcome, code);
    });
    expect(outcomes[0]?.error?.message).toContain(
      `the agent sent 65 EK certificates; at most ${MAX_PRESENTED_CERTIFICATES + 1} are read`,
    );
    expect(errorLines()).toEqual([]);

    // The chains were built (both refusals name what chain building found, and the honest EK
    // chained to the swtpm CA), by the workers: the main thread parsed no certificate of theirs.
    expect(mainThread).toEqual({ parsed: 0, chains: 0 });
    const jobs = await workerJobs();
    expect(jobs.ERR_ATTEST_EK_UNTRUSTED).toBe(2);
    expect(jobs.ok).toBeGreaterThanOrEqual(1);
    // Refused by size before any parsing, so never sent to a worker.
    expect(jobs.ERR_ATTEST_EVIDENCE_TOO_LARGE).toBeUndefined();
  });
});

describe('the EK worker pool', () => {
  function pool(options: { size: number; maxQueued?: number; script?: URL }) {
    const logs = new LogSink();
    const registry = new Registry();
    const jobs = new Counter({
      name: 'jobs',
      help: 'jobs',
      labelNames: ['result'] as const,
      registers: [registry],
    });
    const workers = new EkWorkerPool({
      trust: {
        roots: [new X509Certificate(readFileSync(swtpm.ekRootCertPath)).raw],
        intermediates: [new X509Certificate(readFileSync(swtpm.ekIssuerCertPath)).raw],
      },
      logger: pino({ level: 'debug' }, logs.stream),
      jobs,
      ...options,
    });
    return { workers, logs, jobs: async () => (await registry.getMetricsAsJSON())[0]?.values ?? [] };
  }
  const job = () => ({
    ekPublic: real.evidence.ek_public,
    certificates: real.evidence.ek_certificates,
    chain: true,
    at: Date.now(),
  });

  it('refuses a job with ERR_ATTEST_BUSY (RESOURCE_EXHAUSTED) when maxQueued jobs already wait', async () => {
    const { workers, jobs } = pool({ size: 1, maxQueued: 1 });
    await workers.start();
    try {
      // One job in the worker, one waiting: the queue is full until the worker answers.
      const running = workers.judge(job());
      const waiting = workers.judge(job());
      const refused = await workers.judge(job()).catch((error: unknown) => error);
      expect(refused).toBeInstanceOf(AttestationError);
      expect((refused as AttestationError).code).toBe('ERR_ATTEST_BUSY');
      expect((refused as AttestationError).grpcStatus).toBe(status.RESOURCE_EXHAUSTED);
      for (const judged of await Promise.all([running, waiting]))
        expect(judged.issuer).toBe(new X509Certificate(real.evidence.ek_certificates[0] ?? '').issuer);
      expect(await jobs()).toEqual(
        expect.arrayContaining([
          expect.objectContaining({ labels: { result: 'ok' }, value: 2 }),
          expect.objectContaining({ labels: { result: 'ERR_ATTEST_BUSY' }, value: 1 }),
        ]),
      );
    } finally {
      await workers.stop();
    }
  });

  it('refuses the job of a worker that dies with ERR_ATTEST_INTERNAL, logs it, and starts another worker', async () => {
    const { workers, logs } = pool({
      size: 1,
      script: new URL('../helpers/dying-ek-worker.mjs', import.meta.url),
    });
    await workers.start();
    try {
      const exited = () => logs.lines.filter((l) => l.msg === 'EK worker exited');
      for (const round of [1, 2]) {
        // The second job can only be refused by a worker started after the first one died.
        const refused = await workers.judge(job()).catch((error: unknown) => error);
        expect(refused).toBeInstanceOf(AttestationError);
        expect((refused as AttestationError).code).toBe('ERR_ATTEST_INTERNAL');
        expect((refused as AttestationError).message).toMatch(/the EK worker stopped while checking/);
        expect(exited()).toHaveLength(round);
        expect(exited()[round - 1]).toMatchObject({ level: 50, exit_code: 70, restart: true });
      }
    } finally {
      await workers.stop();
    }
  });

  it('refuses the jobs in its workers and those still waiting when it stops', async () => {
    const { workers } = pool({ size: 1 });
    await workers.start();
    const running = workers.judge(job()).catch((error: unknown) => error);
    const waiting = workers.judge(job()).catch((error: unknown) => error);
    await workers.stop();
    for (const refused of await Promise.all([running, waiting]))
      expect(refused).toMatchObject({ code: 'ERR_ATTEST_INTERNAL', message: 'the server is stopping' });
  });
});

describe('oversized certificate evidence is refused before it is parsed', () => {
  it(`a certificate field longer than MAX_EK_CERTIFICATE_BYTES (${MAX_EK_CERTIFICATE_BYTES})`, async () => {
    const outcome = await send([Buffer.alloc(MAX_EK_CERTIFICATE_BYTES + 1, 0x30)]);
    expectRefused(outcome, 'ERR_ATTEST_EVIDENCE_TOO_LARGE');
    expect(outcome.error?.message).toContain(
      `EK certificate 1 of 1 is ${MAX_EK_CERTIFICATE_BYTES + 1} bytes; at most ${MAX_EK_CERTIFICATE_BYTES} are read`,
    );
  });

  it(`a message longer than MAX_AGENT_MESSAGE_BYTES (${MAX_AGENT_MESSAGE_BYTES}), by gRPC before it is decoded`, async () => {
    const before = server.logs.decisions().length;
    const outcome = await send([Buffer.alloc(MAX_AGENT_MESSAGE_BYTES, 0x30)]);
    expect(outcome.result).toBeUndefined();
    expect((outcome.error?.cause as ServiceError | undefined)?.code).toBe(status.RESOURCE_EXHAUSTED);
    expect(outcome.error?.message).toMatch(/larger than max/);
    // The handler never got the message: it saw the stream break, and refused that at warn.
    const broken = await until('the server to log the broken stream', () =>
      server.logs
        .decisions()
        .slice(before)
        .find((d) => d.reason === 'ERR_ATTEST_BAD_REQUEST'),
    );
    expect(broken.detail).toMatch(/^the stream broke before the handshake finished/);
    expect(
      server.logs
        .decisions()
        .slice(before)
        .map((d) => d.reason),
    ).toEqual(['ERR_ATTEST_BAD_REQUEST']);
    expect(errorLines()).toEqual([]);
  });
});

describe('certificate material one X.509 parser cannot read is ERR_ATTEST_EK_INVALID, logged at warn', () => {
  /** A DER-valid subjectAltName holding an ediPartyName: OpenSSL reads it, the strict DER reader refuses it. */
  const ediPartyName = () => new px.Extension('2.5.29.17', false, Buffer.from('3007a505a1030c0141', 'hex'));

  it('an EK certificate for the real EK whose subjectAltName holds an ediPartyName', async () => {
    const key = p256();
    const evil = await hostileCa(key);
    const leaf = await forgedEkCertificate({ cert: evil, key: key.privateKey }, [ediPartyName()]);
    expect(leaf.subjectAltName).toBe('EdiPartyName:<unsupported>');
    const outcome = await send([leaf, evil]);
    expectRefused(outcome, 'ERR_ATTEST_EK_INVALID');
    expect(outcome.error?.message).toMatch(
      /the EK certificate is not a valid X\.509 certificate.*EDIPartyName/,
    );
    expect(errorLines()).toEqual([]);
  });

  it('a CA certificate sent with the real EK certificate that holds one', async () => {
    const key = p256();
    const odd = await craft({
      subject: 'CN=odd-intermediate',
      publicKey: key.publicKey,
      selfKey: key.privateKey,
      extensions: [new px.BasicConstraintsExtension(true, undefined, true), ediPartyName()],
    });
    const [ekCert] = real.evidence.ek_certificates;
    if (ekCert === undefined) throw new Error('no EK certificate');
    expectRefused(await send([ekCert, odd]), 'ERR_ATTEST_EK_INVALID');
    expect(errorLines()).toEqual([]);
  });

  it('EK certificate bytes that no parser reads', async () => {
    expectRefused(await send([Buffer.from('not a certificate')]), 'ERR_ATTEST_EK_INVALID');
    expect(errorLines()).toEqual([]);
  });
});
