/**
 * Starts and stops a whole server from a validated configuration: safety checks, datastore and
 * migrations, the admin API, the health endpoint.
 *
 * @module
 */
import type { FastifyInstance } from 'fastify';
import { AdminServer } from './admin/server.js';
import type { Clock } from './clock.js';
import { checkConfigSafety, prepareDirectories } from './config/safety.js';
import type { ServerConfig } from './config/schema.js';
import type { Datastore } from './datastore/datastore.js';
import { openSqliteDatastore } from './datastore/sqlite.js';
import { startHealthServer } from './http/health.js';
import type { Logger } from './log.js';
import { ServerMetrics } from './metrics.js';
import { RegistrationService } from './registration/service.js';

export interface RunningServer {
  datastore: Datastore;
  health: FastifyInstance;
  stop(): Promise<void>;
}

export async function startServer(
  config: ServerConfig,
  logger: Logger,
  clock: Clock,
): Promise<RunningServer> {
  const { warnings } = checkConfigSafety(config);
  for (const warning of warnings) logger.warn({ development: true }, warning);
  prepareDirectories(config);

  const opened = await openSqliteDatastore(config.data_dir, clock);
  const { datastore } = opened;
  if (opened.migrated.length > 0)
    logger.info({ migrations: opened.migrated, path: opened.path }, 'datastore migrated');

  const metrics = new ServerMetrics();
  const admin = new AdminServer({
    socketPath: config.admin_socket,
    allowedUids: config.admin_allowed_uids,
    service: new RegistrationService(datastore, config.trust_domain, clock),
    logger,
    onCall: (method, result) => metrics.adminCalls.inc({ method, result }),
  });
  let health: FastifyInstance | undefined;
  try {
    await admin.start();
    health = await startHealthServer({
      address: config.health_address,
      registry: metrics.registry,
      ready: () => datastore.ping(),
    });
  } catch (error) {
    await admin.stop();
    await datastore.close();
    throw error;
  }
  const healthServer = health;
  logger.info(
    { trust_domain: config.trust_domain, data_dir: config.data_dir, health_address: config.health_address },
    'ironroot-server started',
  );
  return {
    datastore,
    health: healthServer,
    async stop() {
      await healthServer.close();
      await admin.stop();
      await datastore.close();
      logger.info('ironroot-server stopped');
    },
  };
}
