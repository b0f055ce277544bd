/**
 * One of the demo's two workloads, run as its own process so the agent attests it by its own
 * process credentials. It takes its X.509-SVID from the Workload API (`SPIFFE_ENDPOINT_SOCKET`),
 * then either serves one mutual-TLS exchange (`--role server`) or makes one (`--role client`),
 * accepting only the peer's SPIFFE ID. It reports on standard output, one JSON object per line:
 * `{"event":"listening","port":N}`, `{"event":"exchanged",…}`, or `{"event":"error","message":…}`.
 *
 * @module
 */
import type { TLSSocket } from 'node:tls';
import { parseArgs } from 'node:util';
import { matchId, SpiffeId } from '../spiffe/index.js';
import { connectMtls, createMtlsServer } from '../workload-api/tls.js';
import { X509Source } from '../workload-api/x509-source.js';

const WAIT_MS = 60_000;

export interface WorkloadReport {
  readonly event: 'listening' | 'exchanged' | 'error';
  readonly port?: number;
  /** The SVID this workload presented. */
  readonly self?: string;
  /** The peer's SPIFFE ID as verified from its SVID. */
  readonly peer?: string;
  /** The line the peer sent. */
  readonly received?: string;
  readonly message?: string;
}

function report(r: WorkloadReport): void {
  process.stdout.write(`${JSON.stringify(r)}\n`);
}

/** The source, once it holds the SVID of `id` (the entry may reach the agent after the first update). */
async function sourceFor(id: SpiffeId): Promise<X509Source> {
  const signal = AbortSignal.timeout(WAIT_MS);
  const source = await X509Source.create({
    pick: (context) => context.svids.find((s) => s.svid.id.equals(id))?.svid,
    signal,
  });
  const has = (): boolean => {
    try {
      source.getX509Svid();
      return true;
    } catch {
      return false;
    }
  };
  if (has()) return source;
  return new Promise((resolve, reject) => {
    const stop = source.onUpdate(() => {
      if (!has()) return;
      stop();
      resolve(source);
    });
    signal.addEventListener('abort', () => {
      stop();
      source.close();
      reject(new Error(`the Workload API never delivered an X.509-SVID for ${id}`));
    });
  });
}

function readLine(socket: TLSSocket): Promise<string> {
  return new Promise((resolve, reject) => {
    let text = '';
    const onData = (chunk: Buffer) => {
      text += chunk.toString();
      const end = text.indexOf('\n');
      if (end !== -1) {
        socket.off('data', onData);
        resolve(text.slice(0, end));
      }
    };
    socket.on('data', onData);
    socket.once('error', reject);
    socket.once('end', () => reject(new Error('the peer closed the connection before a full line')));
  });
}

async function serve(source: X509Source, self: SpiffeId, peer: SpiffeId): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    const server = createMtlsServer(
      source,
      matchId(peer),
      (socket, peerId) => {
        readLine(socket)
          .then((line) => {
            socket.end(`hello ${peerId}, this is ${self}\n`);
            report({ event: 'exchanged', self: self.toString(), peer: peerId.toString(), received: line });
            server.close(() => resolve());
          })
          .catch(reject);
      },
      (refused) => report({ event: 'error', message: refused.message }),
    );
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      if (typeof address === 'object' && address !== null) report({ event: 'listening', port: address.port });
    });
  });
}

async function call(source: X509Source, self: SpiffeId, peer: SpiffeId, port: number): Promise<void> {
  const { socket, peerId } = await connectMtls(source, matchId(peer), { host: '127.0.0.1', port });
  socket.write(`hello ${peerId}, this is ${self}\n`);
  const reply = await readLine(socket);
  socket.end();
  report({ event: 'exchanged', self: self.toString(), peer: peerId.toString(), received: reply });
}

export async function workloadMain(argv: readonly string[]): Promise<number> {
  try {
    const { values } = parseArgs({
      args: [...argv],
      options: {
        role: { type: 'string' },
        id: { type: 'string' },
        peer: { type: 'string' },
        port: { type: 'string' },
      },
      strict: true,
    });
    if (values.role !== 'server' && values.role !== 'client')
      throw new Error('--role must be server or client');
    if (values.id === undefined || values.peer === undefined) throw new Error('--id and --peer are required');
    const self = SpiffeId.parse(values.id);
    const peer = SpiffeId.parse(values.peer);
    const source = await sourceFor(self);
    try {
      if (values.role === 'server') await serve(source, self, peer);
      else {
        const port = Number(values.port);
        if (!Number.isInteger(port) || port <= 0 || port > 65535)
          throw new Error('--port must be a TCP port');
        await call(source, self, peer, port);
      }
    } finally {
      source.close();
    }
    return 0;
  } catch (error) {
    report({ event: 'error', message: (error as Error).message });
    return 1;
  }
}

process.exit(await workloadMain(process.argv.slice(2)));
