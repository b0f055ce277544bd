/**
 * Starts and stops a whole server from a validated configuration: safety checks, datastore and
 * migrations, the key manager and CA, the admin API, the HTTP endpoints (health, bundle
 * endpoint, OIDC discovery), and the poller that fetches federated trust domains' bundles.
 *
 * @module
 */
import type { FastifyInstance } from 'fastify';
import { bindAddress, lockDir } from '../host/index.js';
import type { KeyManager } from '../hsm/key-manager.js';
import { openKeyManager } from '../hsm/open.js';
import { AdminServer } from './admin/server.js';
import { EntryJournal } from './agentapi/entries.js';
import { ContinuousAttestation } from './agentapi/reattest.js';
import { AgentApiServer } from './agentapi/server.js';
import { SyncHandlers } from './agentapi/sync.js';
import { CertificateAuthority } from './ca/authority.js';
import { meteredKeyManager } from './ca/metered-keys.js';
import { CaService } from './ca/service.js';
import type { Clock } from './clock.js';
import { redactSecrets } from './config/load.js';
import { prepareDirectories } from './config/safety.js';
import type { ServerConfig } from './config/schema.js';
import type { Datastore } from './datastore/datastore.js';
import { openConfiguredDatastore } from './datastore/open.js';
import { FederationPoller } from './federation/poller.js';
import { startBundleEndpoint } from './http/bundle-endpoint.js';
import { startHealthServer } from './http/health.js';
import { startOidcDiscovery } from './http/oidc.js';
import { serverSpiffeId } from './identity.js';
import type { Logger } from './log.js';
import { ServerMetrics } from './metrics.js';
import { EkWorkerPool } from './nodeattestor/ek-pool.js';
import { DATA_DIR_LOCK, preflight } from './preflight.js';
import { ProfileCatalog } from './profiles/catalog.js';
import { RegistrationService } from './registration/service.js';

/** How often the CA checks whether to prepare, activate or prune. */
const ROTATION_CHECK_MS = 10_000;

export interface RunningServer {
  datastore: Datastore;
  ca: CertificateAuthority;
  health: FastifyInstance;
  /** Bound ports of the optional endpoints (useful when configured with port 0). */
  ports: { agentApi: number; bundleEndpoint?: number; oidc?: number };
  stop(): Promise<void>;
}

export interface StartOptions {
  clock: Clock;
  /** Opens the configured key manager; tests may hand in another. */
  openKeys?: (spec: string) => Promise<KeyManager>;
}

export async function startServer(
  config: ServerConfig,
  logger: Logger,
  options: StartOptions,
): Promise<RunningServer> {
  const { clock } = options;
  const { warnings, tpmPolicy, upstream } = await preflight(config);
  for (const warning of warnings) logger.warn({ development: config.development }, warning);
  prepareDirectories(config);
  // Held until the process ends: a second server on this data directory would run a second CA
  // over the same datastore. Taken before the datastore opens and the admin socket is claimed.
  const lock = lockDir(config.data_dir, DATA_DIR_LOCK);

  const closers: (() => Promise<void>)[] = [async () => lock.release()];
  const stopAll = async () => {
    for (const close of closers.reverse()) await close();
  };
  let openedCa: CertificateAuthority | undefined;
  try {
    const store = await openConfiguredDatastore(config, clock, {
      onConnectionError: (error) =>
        logger.warn({ err: error.message }, 'a PostgreSQL connection broke; the next query opens a new one'),
    });
    const { datastore } = store;
    closers.push(() => datastore.close());
    if (store.migrated.length > 0) {
      logger.info({ migrations: store.migrated, path: store.path }, 'datastore migrated');
    }

    const metrics = new ServerMetrics();
    const opened = await (
      options.openKeys ??
      ((spec) =>
        openKeyManager(spec, {
          onEvent: (event) => logger.warn({ hsm_event: event.type }, 'key manager event'),
        }))
    )(config.key_manager);
    const keyManager = meteredKeyManager(opened, {
      duration: metrics.hsmSignDuration,
      errors: metrics.hsmSignErrors,
    });
    closers.push(() => keyManager.close());
    logger.info(
      { key_manager: redactSecrets(config.key_manager), kind: keyManager.kind },
      'key manager open',
    );

    const ca = await CertificateAuthority.open({
      trustDomain: config.trust_domain,
      keyManager,
      datastore,
      clock,
      logger,
      caTtl: config.ca_ttl,
      keyType: config.ca_key_type,
      refreshHint: config.bundle_endpoint?.refresh_hint ?? 300,
      ...(config.ca_subject ? { subject: config.ca_subject } : {}),
      ...(config.jwt_issuer ? { jwtIssuer: config.jwt_issuer } : {}),
      ...(upstream ? { upstream } : {}),
    });
    openedCa = ca;
    metrics.watchCa(() => ca.slots);
    const reattest =
      tpmPolicy && config.tpm_attestation
        ? new ContinuousAttestation({
            datastore,
            clock,
            logger,
            policy: tpmPolicy,
            intervalSeconds: config.tpm_attestation.reattest_interval,
            deadlineSeconds:
              config.tpm_attestation.reattest_deadline ?? config.tpm_attestation.reattest_interval,
            reattestations: metrics.reattestations,
          })
        : undefined;
    if (reattest) {
      await reattest.start();
      closers.push(async () => reattest.stop());
      metrics.countUntrusted(() => reattest.untrusted);
    }
    const admin = new AdminServer({
      socketPath: config.admin_socket,
      allowedUids: config.admin_allowed_uids,
      service: new RegistrationService(datastore, config.trust_domain, clock),
      ca: new CaService({
        ca,
        datastore,
        trustDomain: config.trust_domain,
        defaultX509SvidTtl: config.default_x509_svid_ttl,
        defaultJwtSvidTtl: config.default_jwt_svid_ttl,
        logger,
        svidsIssued: metrics.svidsIssued,
      }),
      profiles: new ProfileCatalog(tpmPolicy?.measuredBoot, datastore),
      logger,
      ...(reattest ? { reattest: (agentId: string) => reattest.reattestNow(agentId) } : {}),
      onCall: (method, result) => metrics.adminCalls.inc({ method, result }),
    });
    closers.push(() => admin.stop());
    await admin.start();

    if (tpmPolicy?.anyEk)
      logger.warn(
        { ek_trust: 'any' },
        'tpm_attestation.ek_trust is "any": EKs not allow-listed or chaining to a configured EK CA are ACCEPTED; any TPM (or TPM simulator) can join this trust domain',
      );
    const ekWorkers = tpmPolicy
      ? new EkWorkerPool({
          trust: {
            roots: tpmPolicy.roots.map((c) => c.raw),
            intermediates: tpmPolicy.intermediates.map((c) => c.raw),
          },
          logger,
          jobs: metrics.ekWorkerJobs,
        })
      : undefined;
    if (ekWorkers) {
      closers.push(() => ekWorkers.stop());
      await ekWorkers.start();
    }
    const agentApi = new AgentApiServer({
      address: config.bind_address,
      trustDomain: config.trust_domain,
      ca,
      datastore,
      clock,
      logger,
      tpmPolicy,
      ...(ekWorkers ? { ekWorkers } : {}),
      agentSvidTtl: config.agent_svid_ttl,
      serverSvidTtl: config.default_x509_svid_ttl,
      rateLimit: {
        perSecond: config.attestation_rate_limit.per_second,
        burst: config.attestation_rate_limit.burst,
      },
      attestations: metrics.attestations,
      attestationDuration: metrics.attestationDuration,
      svidsIssued: metrics.svidsIssued,
      ...(reattest ? { reattest } : {}),
      sync: new SyncHandlers({
        trustDomain: config.trust_domain,
        ca,
        datastore,
        journal: new EntryJournal(datastore, serverSpiffeId(config.trust_domain)),
        clock,
        logger,
        defaultX509SvidTtl: config.default_x509_svid_ttl,
        defaultJwtSvidTtl: config.default_jwt_svid_ttl,
        entriesSent: metrics.entriesSent,
        svidsIssued: metrics.svidsIssued,
        duration: metrics.syncDuration,
      }),
    });
    closers.push(() => agentApi.stop());
    const agentApiPort = await bindAddress('bind_address', config.bind_address, () => agentApi.start());
    logger.info(
      { address: config.bind_address, port: agentApiPort, tpm_attestation: tpmPolicy !== undefined },
      'agent API listening',
    );

    const health = await bindAddress('health_address', config.health_address, () =>
      startHealthServer({
        address: config.health_address,
        registry: metrics.registry,
        ready: async () => {
          await datastore.ping();
          await ca.selfTest();
        },
      }),
    );
    closers.push(() => health.close());

    const ports: RunningServer['ports'] = { agentApi: agentApiPort };
    const bundleEndpoint = config.bundle_endpoint;
    if (bundleEndpoint) {
      const endpoint = await bindAddress('bundle_endpoint.address', bundleEndpoint.address, () =>
        startBundleEndpoint({
          address: bundleEndpoint.address,
          profile: bundleEndpoint.profile,
          ...(bundleEndpoint.cert_file ? { certFile: bundleEndpoint.cert_file } : {}),
          ...(bundleEndpoint.key_file ? { keyFile: bundleEndpoint.key_file } : {}),
          ca,
          trustDomain: config.trust_domain,
          svidTtl: config.default_x509_svid_ttl,
          clock,
          logger,
        }),
      );
      closers.push(() => endpoint.close());
      ports.bundleEndpoint = endpoint.port;
      logger.info({ port: endpoint.port, profile: bundleEndpoint.profile }, 'bundle endpoint listening');
    }
    const { oidc_discovery: oidcDiscovery, jwt_issuer: issuer } = config;
    if (oidcDiscovery && issuer) {
      const oidc = await bindAddress('oidc_discovery.address', oidcDiscovery.address, () =>
        startOidcDiscovery({
          address: oidcDiscovery.address,
          issuer,
          ...(oidcDiscovery.cert_file ? { certFile: oidcDiscovery.cert_file } : {}),
          ...(oidcDiscovery.key_file ? { keyFile: oidcDiscovery.key_file } : {}),
          ca,
          logger,
        }),
      );
      closers.push(() => oidc.close());
      ports.oidc = oidc.port;
      logger.info({ port: oidc.port, issuer: config.jwt_issuer }, 'OIDC discovery listening');
    }

    // Rotation starts with the server: during a start that fails, nothing generates keys behind undoOpen.
    ca.confirmOpen();
    const rotation = setInterval(() => {
      ca.rotate().catch((error: unknown) => logger.error({ err: error }, 'CA rotation failed; will retry'));
    }, ROTATION_CHECK_MS);
    closers.push(async () => clearInterval(rotation));
    // Federated bundles are fetched once the CA serves: an https_spiffe peer may be fetching ours.
    const federation = new FederationPoller({
      list: () => datastore.listFederationRelationships(),
      datastore,
      clock,
      logger,
      fetches: metrics.federationFetches,
    });
    federation.start();
    closers.push(() => federation.stop());

    logger.info(
      { trust_domain: config.trust_domain, data_dir: config.data_dir, health_address: config.health_address },
      'ironroot-server started',
    );
    return {
      datastore,
      ca,
      health,
      ports,
      async stop() {
        await stopAll();
        logger.info('ironroot-server stopped');
      },
    };
  } catch (error) {
    // A failed start leaves the token as it found it: the CA keys this start generated are destroyed
    // (the key manager is still open here; stopAll closes it).
    await openedCa?.undoOpen();
    await stopAll();
    throw error;
  }
}
