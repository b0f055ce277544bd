/**
 * The agent API's gRPC service with handlers of a test's own, on a Unix socket without TLS, and a
 * client of it: for tests of what grpc-js does to a server call (a cancel while the handler was
 * still busy, say), which the real server's TLS and authorization would only hide.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  type Client,
  credentials,
  Server,
  ServerCredentials,
  type UntypedServiceImplementation,
} from '@grpc/grpc-js';
import { agentService } from '../../src/agent-api/proto.js';

export interface BareAgentApi {
  /** A client of the service; its methods are the proto's (`Reattest`, `FetchEntries`, …). */
  client: Client;
  close(): void;
}

export async function bareAgentApi(handlers: UntypedServiceImplementation): Promise<BareAgentApi> {
  const Service = agentService();
  const server = new Server();
  server.addService(Service.service, handlers);
  const dir = mkdtempSync(join(tmpdir(), 'ironroot-bare-agent-api-'));
  const address = `unix:${join(dir, 'agent-api.sock')}`;
  try {
    await new Promise<void>((resolve, reject) =>
      server.bindAsync(address, ServerCredentials.createInsecure(), (e) => (e ? reject(e) : resolve())),
    );
  } catch (error) {
    server.forceShutdown();
    rmSync(dir, { recursive: true, force: true });
    throw error;
  }
  const client = new Service(address, credentials.createInsecure());
  return {
    client,
    close() {
      client.close();
      server.forceShutdown();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
