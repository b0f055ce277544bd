import { EventEmitter } from 'node:events';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import type { ClientDuplexStream } from '@grpc/grpc-js';
import { pino } from 'pino';
import { Counter, Registry } from 'prom-client';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { ContinuousAttestation, type ReattestStream } from '../../src/server/agentapi/reattest.js';
import type { AttestedNode, Datastore, NodeTrust } from '../../src/server/datastore/datastore.js';
import { openSqliteDatastore } from '../../src/server/datastore/index.js';
import { parsePcrSelection, type TpmPolicy } from '../../src/server/nodeattestor/policy.js';
import { until } from '../attestation/harness.js';
import { type BareAgentApi, bareAgentApi } from '../helpers/bare-agent-api.js';

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

/** A node's recorded quote, as any server's attestation, renewal or re-quote writes it. */
function quoted(at: number): Uint8Array {
  return new Uint8Array(Buffer.from(JSON.stringify({ quoted_at: at })));
}

/** An agent's Reattest stream that keeps what the scheduler writes on it and never answers. */
function silentStream() {
  const stream = Object.assign(new EventEmitter(), {
    written: [] as unknown[],
    write(message: unknown) {
      stream.written.push(message);
      return true;
    },
    end() {},
  });
  return stream;
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
const clock = { now: () => Date.now() };

/** The scheduler over `datastore`, with a silent log and a counter of its own. */
function scheduleOf(datastore: Datastore, intervalSeconds: number, deadlineSeconds = 1, registry?: Registry) {
  return new ContinuousAttestation({
    datastore,
    clock,
    logger: pino({ level: 'silent' }),
    policy,
    intervalSeconds,
    deadlineSeconds,
    reattestations: new Counter({
      name: 'r_total',
      help: 'test',
      labelNames: ['result'],
      registers: registry ? [registry] : [],
    }),
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
    scheduler = scheduleOf(memoryStore(nodes, verdicts), 2, 2);
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
    scheduler = scheduleOf(memoryStore(nodes, verdicts), 1);
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
    scheduler = scheduleOf(memoryStore(nodes, verdicts), 600);
    await scheduler.start();
    // An operator's re-quote goes out now; its 1 s deadline is far before that bucket.
    const result = await scheduler.reattestNow(asked.spiffeId);
    expect(result).toMatchObject({ trusted: false, code: 'ERR_REATTEST_NO_ANSWER' });
    expect(verdicts.map((v) => v.id)).toEqual([asked.spiffeId]);
  });
});

describe('the re-quote schedule with servers sharing a datastore', () => {
  it('leaves a node another server re-quotes lately alone, and makes one nobody re-quotes untrusted', async () => {
    const now = () => Math.floor(Date.now() / 1000);
    const elsewhere = tpmNode(1);
    const silent = {
      ...tpmNode(2),
      tpm: { ...tpmNode(2).tpm, lastQuote: quoted(now() - 3600) },
    } as AttestedNode;
    const nodes = new Map([elsewhere, silent].map((n) => [n.spiffeId, n]));
    // The other server's re-quotes: the node's recorded quote keeps moving on.
    const otherServer = setInterval(() => {
      (elsewhere.tpm as NonNullable<AttestedNode['tpm']>).lastQuote = quoted(now());
    }, 200);
    const verdicts: { id: string; trust: NodeTrust }[] = [];
    scheduler = scheduleOf(memoryStore(nodes, verdicts), 2, 2);
    try {
      await scheduler.start();
      // Asked while no stream of it is here: the answer says where to ask, and no verdict is made.
      await expect(scheduler.reattestNow(elsewhere.spiffeId)).rejects.toMatchObject({
        code: 'ERR_REATTEST_OTHER_SERVER',
      });
      await until('the silent node to be judged', () => (verdicts.length > 0 ? true : undefined));
      await expect(scheduler.reattestNow(elsewhere.spiffeId)).rejects.toMatchObject({
        code: 'ERR_REATTEST_OTHER_SERVER',
      });
      expect(verdicts.map((v) => [v.id, v.trust.code])).toEqual([
        [silent.spiffeId, 'ERR_REATTEST_NO_ANSWER'],
      ]);
      expect(elsewhere.trust.state).toBe('trusted');
      expect(scheduler.untrusted).toBe(1);
    } finally {
      clearInterval(otherServer);
    }
  }, 60_000);

  it('gives the other server a whole window after a datastore outage before judging its node unquoted', async () => {
    const now = () => Math.floor(Date.now() / 1000);
    const elsewhere = { ...tpmNode(1), tpm: { ...tpmNode(1).tpm, lastQuote: quoted(now()) } } as AttestedNode;
    const nodes = new Map([[elsewhere.spiffeId, elsewhere]]);
    const verdicts: { id: string; trust: NodeTrust }[] = [];
    const base = memoryStore(nodes, verdicts);
    let down = false;
    let failed = 0;
    let readsAfter = 0;
    const refuse = () => {
      failed++;
      throw new Error('connect ECONNREFUSED (the datastore is down)');
    };
    const store = {
      ...base,
      issueNonce: async (...args: Parameters<Datastore['issueNonce']>) =>
        down ? refuse() : base.issueNonce(...args),
      getNode: async (...args: Parameters<Datastore['getNode']>) => {
        if (down) return refuse();
        readsAfter++;
        return base.getNode(...args);
      },
    } as Datastore;
    // The other server records a re-quote only while the datastore is up, and after an outage only
    // once this one has read the node again: the stored quote is then older than the window.
    const otherServer = setInterval(() => {
      if (!down && readsAfter > 0)
        (elsewhere.tpm as NonNullable<AttestedNode['tpm']>).lastQuote = quoted(now());
    }, 200);
    scheduler = scheduleOf(store, 2, 2);
    try {
      down = true;
      await scheduler.start();
      // Three failed datastore calls (a challenge is judged from the datastore at its deadline): down
      // for longer than a node may go unquoted (counted, not timed).
      await until('three failed datastore calls', () => (failed >= 3 ? true : undefined), 60_000);
      down = false;
      await until(
        'three reads of the node after the outage',
        () => (readsAfter >= 3 ? true : undefined),
        60_000,
      );
      expect(verdicts).toEqual([]);
      expect(elsewhere.trust.state).toBe('trusted');
    } finally {
      clearInterval(otherServer);
    }
  }, 120_000);

  it('writes no nonce for a node whose stream is not here; its agent arriving mid-challenge gets it then', async () => {
    const quotedNow = quoted(Math.floor(Date.now() / 1000));
    const elsewhere = { ...tpmNode(1), tpm: { ...tpmNode(1).tpm, lastQuote: quotedNow } } as AttestedNode;
    const arriving = { ...tpmNode(2), tpm: { ...tpmNode(2).tpm, lastQuote: quotedNow } } as AttestedNode;
    const nodes = new Map([elsewhere, arriving].map((n) => [n.spiffeId, n]));
    const verdicts: { id: string; trust: NodeTrust }[] = [];
    const base = memoryStore(nodes, verdicts);
    let nonces = 0;
    const store = {
      ...base,
      issueNonce: async (...args: Parameters<Datastore['issueNonce']>) => {
        nonces++;
        return base.issueNonce(...args);
      },
    } as Datastore;
    scheduler = scheduleOf(store, 600, 2);
    await scheduler.start();
    await expect(scheduler.reattestNow(elsewhere.spiffeId)).rejects.toMatchObject({
      code: 'ERR_REATTEST_OTHER_SERVER',
    });
    expect(nonces).toBe(0);

    // A challenge still open when the agent's stream comes: its nonce is written, and it goes out.
    const stream = silentStream();
    const verdict = scheduler.reattestNow(arriving.spiffeId);
    await new Promise((resolve) => setTimeout(resolve, 100));
    expect(nonces).toBe(0);
    scheduler.attach(arriving.spiffeId, stream as unknown as ReattestStream);
    await until('the challenge on the stream that came', () =>
      stream.written.length > 0 ? true : undefined,
    );
    expect(nonces).toBe(1);
    expect(stream.written[0]).toMatchObject({ challenge: { nonce: expect.any(Uint8Array) } });
    // Unanswered on a stream that stays open: the deadline's verdict.
    expect(await verdict).toMatchObject({ trusted: false, code: 'ERR_REATTEST_NO_ANSWER' });
  });

  it('judges a challenge whose stream closed unanswered like one that never reached the agent; a silent open stream fails at its deadline', async () => {
    const recent = (i: number) =>
      ({
        ...tpmNode(i),
        tpm: { ...tpmNode(i).tpm, lastQuote: quoted(Math.floor(Date.now() / 1000)) },
      }) as AttestedNode;
    // Both quoted just now; one agent leaves mid-challenge (to another server), one stays and is silent.
    const left = recent(1);
    const silent = recent(2);
    const nodes = new Map([left, silent].map((n) => [n.spiffeId, n]));
    const verdicts: { id: string; trust: NodeTrust }[] = [];
    scheduler = scheduleOf(memoryStore(nodes, verdicts), 600);
    await scheduler.start();
    const leaving = silentStream();
    const staying = silentStream();
    scheduler.attach(left.spiffeId, leaving as unknown as ReattestStream);
    scheduler.attach(silent.spiffeId, staying as unknown as ReattestStream);

    const leftVerdict = scheduler.reattestNow(left.spiffeId);
    const silentVerdict = scheduler.reattestNow(silent.spiffeId);
    await until('both challenges out', () =>
      leaving.written.length > 0 && staying.written.length > 0 ? true : undefined,
    );
    leaving.emit('close');
    await expect(leftVerdict).rejects.toMatchObject({ code: 'ERR_REATTEST_OTHER_SERVER' });
    expect(await silentVerdict).toMatchObject({ trusted: false, code: 'ERR_REATTEST_NO_ANSWER' });
    expect(verdicts.map((v) => [v.id, v.trust.code])).toEqual([[silent.spiffeId, 'ERR_REATTEST_NO_ANSWER']]);
    expect(left.trust.state).toBe('trusted');
  });
});

describe('a challenge unanswered after the node proved itself elsewhere', () => {
  it('gives no verdict when the node was quoted after the challenge went out; a node not quoted since is untrusted', async () => {
    const moved = tpmNode(1);
    const silent = tpmNode(2);
    const nodes = new Map([moved, silent].map((n) => [n.spiffeId, n]));
    const verdicts: { id: string; trust: NodeTrust }[] = [];
    scheduler = scheduleOf(memoryStore(nodes, verdicts), 600);
    await scheduler.start();
    // Both streams stay open and silent: the agents hang, or left without the stream closing here.
    const movedStream = silentStream();
    const staying = silentStream();
    scheduler.attach(moved.spiffeId, movedStream as unknown as ReattestStream);
    scheduler.attach(silent.spiffeId, staying as unknown as ReattestStream);
    const movedVerdict = scheduler.reattestNow(moved.spiffeId);
    const silentVerdict = scheduler.reattestNow(silent.spiffeId);
    await until('both challenges out', () =>
      movedStream.written.length > 0 && staying.written.length > 0 ? true : undefined,
    );
    // Another server attested the first node afresh, in a later second than the challenge.
    (moved.tpm as NonNullable<AttestedNode['tpm']>).lastQuote = quoted(Math.floor(Date.now() / 1000) + 1);
    await expect(movedVerdict).rejects.toMatchObject({
      code: 'ERR_REATTEST_OTHER_SERVER',
      message: expect.stringMatching(
        /did not answer this challenge, but its TPM was quoted at .*since this challenge was sent/,
      ),
    });
    expect(await silentVerdict).toMatchObject({ trusted: false, code: 'ERR_REATTEST_NO_ANSWER' });
    expect(verdicts.map((v) => [v.id, v.trust.code])).toEqual([[silent.spiffeId, 'ERR_REATTEST_NO_ANSWER']]);
    expect(moved.trust.state).toBe('trusted');
  });
});

describe('a verdict made on a node that attested again before it was written', () => {
  it('is not recorded: the fresh attestation stands, and the challenge counts as no verdict', async () => {
    const store = (
      await openSqliteDatastore(join(mkdtempSync(join(tmpdir(), 'ironroot-rq-')), 'data'), clock)
    ).datastore;
    const { trust: _trust, banned: _banned, ...first } = tpmNode(1);
    await store.upsertNode(first, 'agent-api');
    // Right after the judge read the node, its agent attested afresh (a new AK) on another server.
    let attestedAgain = false;
    const racing = new Proxy(store, {
      get(target, property) {
        if (property === 'getNode')
          return async (id: string, options?: { eventLog?: boolean }) => {
            const read = await target.getNode(id, options);
            if (options?.eventLog === true && !attestedAgain) {
              attestedAgain = true;
              await target.upsertNode(
                {
                  ...first,
                  serialNumber: '02',
                  attestationCount: 2,
                  tpm: { ekHash: '1', akPublic: new Uint8Array([2]) },
                },
                'agent-api',
              );
            }
            return read;
          };
        const value = Reflect.get(target, property, target);
        return typeof value === 'function' ? value.bind(target) : value;
      },
    });
    const registry = new Registry();
    scheduler = scheduleOf(racing, 600, 1, registry);
    try {
      await scheduler.start();
      const stream = silentStream();
      scheduler.attach(first.spiffeId, stream as unknown as ReattestStream);
      await expect(scheduler.reattestNow(first.spiffeId)).rejects.toMatchObject({
        code: 'ERR_AGENT_ATTESTED_AGAIN',
        message: expect.stringContaining('the verdict was not recorded'),
      });
      expect(attestedAgain).toBe(true);
      expect(await store.getNode(first.spiffeId)).toMatchObject({
        attestationCount: 2,
        trust: { state: 'trusted' },
      });
      // The agent was sent the challenge and no outcome: the verdict was on an AK it no longer uses.
      expect(stream.written).toHaveLength(1);
      const counted = (await registry.getSingleMetric('r_total')?.get())?.values ?? [];
      expect(counted.map((v) => [v.labels.result, v.value])).toEqual([['ERR_AGENT_ATTESTED_AGAIN', 1]]);
    } finally {
      scheduler.stop();
      await store.close();
    }
  });
});

describe('a re-quote stream the agent left while it was being admitted', () => {
  let api: BareAgentApi | undefined;
  afterEach(() => api?.close());

  /**
   * A real gRPC server whose Reattest handler hands each call over unattached, standing in for the
   * agent API's handler, whose admission is a datastore read during which the agent may cancel; and
   * a node re-quoted just now by another server, so that a challenge that never reaches the agent
   * here gives no verdict.
   */
  async function setUp() {
    const quotedNow = quoted(Math.floor(Date.now() / 1000));
    const node = { ...tpmNode(1), tpm: { ...tpmNode(1).tpm, lastQuote: quotedNow } } as AttestedNode;
    const verdicts: { id: string; trust: NodeTrust }[] = [];
    const attestation = scheduleOf(memoryStore(new Map([[node.spiffeId, node]]), verdicts), 600);
    scheduler = attestation;
    await attestation.start();
    const received: ReattestStream[] = [];
    api = await bareAgentApi({ Reattest: (call: ReattestStream) => received.push(call) });
    const agent = api.client;
    /** Opens a stream; resolves to the agent's end and the server's, not yet attached. */
    const open = async () => {
      const call = (agent as unknown as { Reattest(): ClientDuplexStream<unknown, unknown> }).Reattest();
      call.on('error', () => {});
      const seen = received.length;
      const server = await until('the server to receive the stream', () => received[seen]);
      return { call, server };
    };
    /** A stream the agent cancels before the server attaches it. */
    const cancelledWhileAdmitting = async () => {
      const { call, server } = await open();
      call.cancel();
      await until('the server to see the cancel', () => (server.cancelled ? true : undefined));
      return server;
    };
    return { node, verdicts, attestation, open, cancelledWhileAdmitting };
  }

  it('is not held: a challenge is judged as never having reached the agent', async () => {
    const { node, verdicts, attestation, cancelledWhileAdmitting } = await setUp();
    expect(attestation.attach(node.spiffeId, await cancelledWhileAdmitting())).toBe(false);
    await expect(attestation.reattestNow(node.spiffeId)).rejects.toMatchObject({
      code: 'ERR_REATTEST_OTHER_SERVER',
    });
    expect(verdicts).toEqual([]);
    expect(node.trust.state).toBe('trusted');
  });

  it('does not replace the stream the agent has open: the challenge goes out on that one', async () => {
    const { node, attestation, open, cancelledWhileAdmitting } = await setUp();
    const live = await open();
    const challenges: unknown[] = [];
    live.call.on('data', (message: unknown) => challenges.push(message));
    expect(attestation.attach(node.spiffeId, live.server)).toBe(true);
    expect(attestation.attach(node.spiffeId, await cancelledWhileAdmitting())).toBe(false);
    const verdict = attestation.reattestNow(node.spiffeId);
    await until('the challenge on the open stream', () => (challenges.length > 0 ? true : undefined));
    expect(challenges[0]).toMatchObject({ challenge: { challenge_id: expect.any(Number) } });
    // Leaving unanswered (to another server) gives no verdict here either.
    live.call.cancel();
    await expect(verdict).rejects.toMatchObject({ code: 'ERR_REATTEST_OTHER_SERVER' });
  });
});
