/**
 * Liveness, readiness and Prometheus metrics over plain HTTP on `health_address` (keep it on
 * loopback or a management network: it needs no authentication and reveals only health).
 *
 * @module
 */
import Fastify, { type FastifyInstance } from 'fastify';
import type { Registry } from 'prom-client';
import { splitHostPort } from '../../host/index.js';

export interface HealthOptions {
  address: string;
  registry: Registry;
  /** Resolves when the server can do its job; rejects with the reason otherwise. */
  ready: () => Promise<void>;
}

export async function startHealthServer(options: HealthOptions): Promise<FastifyInstance> {
  const app = Fastify({ logger: false });
  app.get('/live', async () => ({ live: true }));
  app.get('/ready', async (_request, reply) => {
    try {
      await options.ready();
      return { ready: true };
    } catch (error) {
      return reply.code(503).send({ ready: false, reason: (error as Error).message });
    }
  });
  app.get('/metrics', async (_request, reply) => {
    reply.header('content-type', options.registry.contentType);
    return options.registry.metrics();
  });
  await app.listen(splitHostPort(options.address));
  return app;
}
