import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  type Client,
  type ClientReadableStream,
  credentials,
  Server,
  ServerCredentials,
  type ServerWritableStream,
} from '@grpc/grpc-js';
import { afterEach, describe, expect, it } from 'vitest';
import {
  agentService,
  type FetchEntriesRequest,
  type FetchEntriesResponse,
} from '../../src/agent-api/proto.js';
import { drained } from '../../src/server/agentapi/sync.js';
import { until } from '../attestation/harness.js';

type EntriesCall = ServerWritableStream<FetchEntriesRequest, FetchEntriesResponse>;

describe('FetchEntries backpressure on a stream the agent cancelled', () => {
  let server: Server | undefined;
  let client: Client | undefined;
  let dir: string | undefined;
  afterEach(() => {
    client?.close();
    server?.forceShutdown();
    if (dir !== undefined) rmSync(dir, { recursive: true, force: true });
  });

  it('does not wait for a drain that cannot come when the agent left before the write', async () => {
    const received: EntriesCall[] = [];
    const Service = agentService();
    server = new Server();
    server.addService(Service.service, { FetchEntries: (call: EntriesCall) => received.push(call) });
    dir = mkdtempSync(join(tmpdir(), 'ironroot-drained-'));
    const address = `unix:${join(dir, 'agent-api.sock')}`;
    await new Promise<void>((resolve, reject) =>
      server?.bindAsync(address, ServerCredentials.createInsecure(), (e) => (e ? reject(e) : resolve())),
    );
    client = new Service(address, credentials.createInsecure());
    const stream = (
      client as unknown as { FetchEntries(request: object): ClientReadableStream<unknown> }
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
