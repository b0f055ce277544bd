import type { ClientReadableStream, ServerWritableStream } from '@grpc/grpc-js';
import { afterEach, describe, expect, it } from 'vitest';
import type { FetchEntriesRequest, FetchEntriesResponse } from '../../src/agent-api/proto.js';
import { drained } from '../../src/server/agentapi/sync.js';
import { until } from '../attestation/harness.js';
import { type BareAgentApi, bareAgentApi } from '../helpers/bare-agent-api.js';

type EntriesCall = ServerWritableStream<FetchEntriesRequest, FetchEntriesResponse>;

describe('FetchEntries backpressure on a stream the agent cancelled', () => {
  let api: BareAgentApi | undefined;
  afterEach(() => api?.close());

  it('does not wait for a drain that cannot come when the agent left before the write', async () => {
    const received: EntriesCall[] = [];
    api = await bareAgentApi({ FetchEntries: (call: EntriesCall) => received.push(call) });
    const stream = (
      api.client as unknown as { FetchEntries(request: object): ClientReadableStream<unknown> }
    ).FetchEntries({});
    stream.on('error', () => {});
    const call = await until('the server to receive the call', () => received[0]);
    // The agent goes away while the server is still authorizing it.
    stream.cancel();
    await until('the server to see the cancel', () => (call.cancelled ? true : undefined));
    const message: FetchEntriesResponse = { full: true, entries: [], deleted_ids: [], cursor: null };
    // The write the sync then makes reports no room, as it does on any destroyed stream.
    expect(call.write(message)).toBe(false);
    const settled = await Promise.race([
      drained(call).then(() => 'resolved'),
      new Promise((resolve) => setTimeout(() => resolve('still waiting'), 2_000)),
    ]);
    expect(settled).toBe('resolved');
  });
});
