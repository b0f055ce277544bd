import { Writable } from 'node:stream';
import { pino } from 'pino';
import { Counter, Registry } from 'prom-client';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { ContinuousAttestation } from '../../src/server/agentapi/reattest.js';
import type { AttestedNode, Datastore, NodeTrust } from '../../src/server/datastore/datastore.js';
import { parsePcrSelection, type TpmPolicy } from '../../src/server/nodeattestor/policy.js';
import { until } from '../attestation/harness.js';

const NODES = 3000;

/**
 * The few datastore calls the scheduler makes, over a map: thousands of nodes without thousands of
 * fsyncs. Nonces are issued and never answered here, so storing them is a no-op.
 */
function memoryStore(nodes: Map<string, AttestedNode>, verdicts: { id: string; trust: NodeTrust }[]) {
  const store: Pick<Datastore, 'listNodes' | 'getNode' | 'recordNodeTrust' | 'issueNonce' | 'pruneNonces'> = {
    issueNonce: async () => undefined,
    pruneNonces: async () => 0,
    listNodes: async () => [...nodes.values()],
    getNode: async (id) => nodes.get(id),
    recordNodeTrust: async (id, update) => {
      const node = nodes.get(id);
      if (node === undefined) throw new Error(`no node ${id}`);
      const changed = node.trust.state !== update.trust.state;
      node.trust = update.trust;
      verdicts.push({ id, trust: update.trust });
      return { node, changed };
    },
  };
  return store as Datastore;
}

function tpmNode(i: number): AttestedNode {
  return {
    spiffeId: `spiffe://example.org/agent/tpm/${i.toString(16).padStart(64, '0')}`,
    attestationType: 'tpm',
    serialNumber: '01',
    expiresAt: 0,
    banned: false,
    selectors: [],
    tpm: { ekHash: String(i), akPublic: new Uint8Array([0]), resetCount: 1 },
    trust: { state: 'trusted', changedAt: 0 },
    attestationCount: 1,
    createdAt: 0,
  };
}

const policy: TpmPolicy = {
  roots: [],
  intermediates: [],
  allowedEkHashes: new Set(),
  anyEk: true,
  selection: parsePcrSelection('sha256:0-7'),
  pcrValues: new Map(),
  requireEventLog: false,
  nonceTtl: 60,
  measuredBoot: { mode: 'none' },
};

let scheduler: ContinuousAttestation | undefined;

function scheduleOf(
  nodes: Map<string, AttestedNode>,
  verdicts: { id: string; trust: NodeTrust }[],
  intervalSeconds: number,
) {
  return new ContinuousAttestation({
    datastore: memoryStore(nodes, verdicts),
    clock: { now: () => Date.now() },
    logger: pino({ level: 'silent' }),
    policy,
    intervalSeconds,
    deadlineSeconds: 1,
    reattestations: new Counter({ name: 'r_total', help: 'test', labelNames: ['result'], registers: [] }),
  });
}
afterEach(() => {
  scheduler?.stop();
  vi.restoreAllMocks();
});

describe('the re-quote schedule', () => {
  it(`keeps ${NODES} silent nodes on one timer and makes each untrusted once their deadline passed`, async () => {
    const nodes = new Map([...Array(NODES).keys()].map((i) => [tpmNode(i).spiffeId, tpmNode(i)]));
    const verdicts: { id: string; trust: NodeTrust }[] = [];
    const registry = new Registry();
    const timeouts = vi.spyOn(globalThis, 'setTimeout');
    const intervals = vi.spyOn(globalThis, 'setInterval');
    scheduler = new ContinuousAttestation({
      datastore: memoryStore(nodes, verdicts),
      clock: { now: () => Date.now() },
      logger: pino({ level: 'silent' }, new Writable({ write: (_c, _e, done) => done() })),
      policy,
      intervalSeconds: 2,
      deadlineSeconds: 2,
      reattestations: new Counter({
        name: 'reattestations_total',
        help: 'test',
        labelNames: ['result'],
        registers: [registry],
      }),
    });
    await scheduler.start();

    await until('every node to be judged', () =>
      new Set(verdicts.map((v) => v.id)).size === NODES ? true : undefined,
    );
    // One timer for all of them, re-armed per wheel bucket: no timer per node, for challenges or
    // for deadlines. (The other timeouts are this test's polling, a few per second; a timer per
    // node would be thousands.)
    expect(intervals).not.toHaveBeenCalled();
    expect(timeouts.mock.calls.length).toBeLessThan(NODES / 4);
    expect(
      verdicts.every((v) => v.trust.state === 'untrusted' && v.trust.code === 'ERR_REATTEST_NO_ANSWER'),
    ).toBe(true);
    expect(scheduler.untrusted).toBe(NODES);
    const counted = (await registry.getSingleMetric('reattestations_total')?.get())?.values ?? [];
    expect(counted.find((v) => v.labels.result === 'ERR_REATTEST_NO_ANSWER')?.value).toBeGreaterThanOrEqual(
      NODES,
    );
  });

  it('skips join-token and banned nodes, and forgets a node evicted meanwhile', async () => {
    const tpm = tpmNode(1);
    const evicted = tpmNode(2);
    const banned = { ...tpmNode(3), banned: true };
    const token = { ...tpmNode(4), attestationType: 'join_token' };
    const nodes = new Map([tpm, evicted, banned, token].map((n) => [n.spiffeId, n]));
    const verdicts: { id: string; trust: NodeTrust }[] = [];
    scheduler = new ContinuousAttestation({
      datastore: memoryStore(nodes, verdicts),
      clock: { now: () => Date.now() },
      logger: pino({ level: 'silent' }),
      policy,
      intervalSeconds: 2,
      deadlineSeconds: 2,
      reattestations: new Counter({ name: 'r_total', help: 'test', labelNames: ['result'], registers: [] }),
    });
    await scheduler.start();
    nodes.delete(evicted.spiffeId);
    await until('the TPM node to be judged', () => (verdicts.length > 0 ? true : undefined));
    expect(verdicts.map((v) => v.id)).toEqual([tpm.spiffeId]);
    // A re-quote asked for by an operator of an evicted node fails clearly.
    await expect(scheduler.reattestNow(evicted.spiffeId)).rejects.toMatchObject({
      code: 'ERR_AGENT_NOT_FOUND',
    });
    await expect(scheduler.reattestNow(token.spiffeId)).rejects.toMatchObject({
      code: 'ERR_INVALID_ARGUMENT',
    });
  });

  it('sleeps with no node scheduled, and wakes for a node attested later', async () => {
    const nodes = new Map<string, AttestedNode>();
    const verdicts: { id: string; trust: NodeTrust }[] = [];
    const timeouts = vi.spyOn(globalThis, 'setTimeout');
    const intervals = vi.spyOn(globalThis, 'setInterval');
    scheduler = scheduleOf(nodes, verdicts, 1);
    await scheduler.start();
    // Nothing is due, so no timer at all: an idle server does not wake for the wheel.
    expect(timeouts).not.toHaveBeenCalled();
    expect(intervals).not.toHaveBeenCalled();

    const node = tpmNode(7);
    nodes.set(node.spiffeId, node);
    scheduler.attested(node.spiffeId);
    await until('the node attested later to be judged', () => (verdicts.length > 0 ? true : undefined));
    expect(verdicts).toEqual([
      {
        id: node.spiffeId,
        trust: expect.objectContaining({ state: 'untrusted', code: 'ERR_REATTEST_NO_ANSWER' }),
      },
    ]);
  });

  it('wakes for a deadline earlier than the bucket its timer sleeps until', async () => {
    const first = tpmNode(1);
    const asked = tpmNode(2);
    const nodes = new Map([first, asked].map((n) => [n.spiffeId, n]));
    const verdicts: { id: string; trust: NodeTrust }[] = [];
    // start() puts both 10–20 minutes away; the timer sleeps until the first of them.
    scheduler = scheduleOf(nodes, verdicts, 600);
    await scheduler.start();
    // An operator's re-quote goes out now; its 1 s deadline is far before that bucket.
    const result = await scheduler.reattestNow(asked.spiffeId);
    expect(result).toMatchObject({ trusted: false, code: 'ERR_REATTEST_NO_ANSWER' });
    expect(verdicts.map((v) => v.id)).toEqual([asked.spiffeId]);
  });
});
