// The server the agent benchmarks run against, in the bench's own process from dist/: memory key
// manager, development mode, loopback ports, its bundle as PEM (and in a file for an agent's
// --trust-bundle), and one join token for the agent under test. Lives apart from scripts/bench-*.mjs
// so `npm run bench` does not run it as a benchmark.
import { X509Certificate } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/**
 * Starts the server in a new temporary directory named after `prefix`; remove `dir` when done.
 * `overrides` replace keys of the server configuration (bench:scale: a PKCS#11 key manager, a rate
 * limit that lets thousands of agents attest from one address).
 */
export async function startBenchServer(dist, trustDomain, prefix, overrides = {}) {
  const { pino } = await import('pino');
  const { validateConfig } = await import(join(dist, 'server', 'config', 'load.js'));
  const { startServer } = await import(join(dist, 'server', 'server.js'));
  const { RegistrationService, hashJoinToken } = await import(
    join(dist, 'server', 'registration', 'service.js')
  );

  const dir = mkdtempSync(join(tmpdir(), prefix));
  const clock = { now: () => Date.now() };
  const server = await startServer(
    validateConfig(
      {
        trust_domain: trustDomain,
        data_dir: join(dir, 'server'),
        admin_socket: join(dir, 'admin.sock'),
        key_manager: 'memory:',
        development: true,
        health_address: '127.0.0.1:0',
        bind_address: '127.0.0.1:0',
        ...overrides,
      },
      'bench',
    ),
    pino({ level: 'silent' }),
    { clock },
  );
  const bundlePem = server.ca
    .bundle()
    .x509Authorities.map((c) => c.toString())
    .join('');
  const bundleFile = join(dir, 'bundle.pem');
  writeFileSync(bundleFile, bundlePem);
  const registration = new RegistrationService(server.datastore, trustDomain, clock);
  const token = await registration.createJoinToken({ ttl: 600, spiffe_id: '' }, 'bench');
  // The node alias `spiffe://<td>/node/bench` for the agent that attests with `token`, the parent
  // under which a benchmark registers its workloads.
  const createTokenAlias = () =>
    server.datastore.createEntry(
      benchEntry({
        spiffeId: `spiffe://${trustDomain}/node/bench`,
        parentId: `spiffe://${trustDomain}/ironroot/server`,
        selectors: [{ type: 'join_token', value: hashJoinToken(token.value).slice(0, 12) }],
      }),
      'bench',
    );
  return { dir, server, bundlePem, bundleFile, token, registration, createTokenAlias };
}

/** A registration entry: `fields` (ID, parent, selectors, TTLs…) over the defaults benchmarks leave alone. */
export function benchEntry(fields) {
  return {
    x509SvidTtl: 0,
    jwtSvidTtl: 0,
    dnsNames: [],
    admin: false,
    downstream: false,
    federatesWith: [],
    hint: '',
    expiresAt: 0,
    ...fields,
  };
}

/**
 * One join-token agent, as an agent attests on first start: a fresh P-256 key and its CSR, attested
 * through `bootstrap` (an AgentApiClient without identity). Its SPIFFE ID, and the identity (key and
 * chain, PEM) its calls then present.
 */
export async function attestJoinTokenAgent(dist, bootstrap, trustDomain, token) {
  const { createCsr, createKeySigner, newKeyPair, SpiffeId } = await import(join(dist, 'spiffe', 'index.js'));
  const { privateKey } = newKeyPair('ec', { namedCurve: 'P-256' });
  const csr = Buffer.from(
    await createCsr(
      { spiffeId: SpiffeId.parse(`spiffe://${trustDomain}/agent/csr`) },
      createKeySigner(privateKey),
    ),
  );
  const result = await bootstrap.attest(
    { method: 'join_token', csr, tpm: null, join_token: token },
    async () => {
      throw new Error('a join token needs no challenge');
    },
  );
  return {
    id: result.spiffe_id,
    identity: {
      keyPem: privateKey.export({ format: 'pem', type: 'pkcs8' }).toString(),
      chainPem: result.svid_chain.map((der) => new X509Certificate(der).toString()).join(''),
    },
  };
}

/** `count` join tokens of an hour, made through `registration` (a RegistrationService). */
export async function benchJoinTokens(registration, count) {
  const values = [];
  for (let i = 0; i < count; i++)
    values.push((await registration.createJoinToken({ ttl: 3600, spiffe_id: '' }, 'bench')).value);
  return values;
}

/** `perAgent` workload entries parented to each of `agentIds`, created in batches of 1000; how many. */
export async function createBenchWorkloads(datastore, trustDomain, agentIds, perAgent) {
  const entries = agentIds.flatMap((parentId, a) =>
    Array.from({ length: perAgent }, (_, i) =>
      benchEntry({
        spiffeId: `spiffe://${trustDomain}/workload/${a}/${i}`,
        parentId,
        selectors: [{ type: 'unix', value: `uid:${1000 + i}` }],
        x509SvidTtl: 3600,
      }),
    ),
  );
  for (let i = 0; i < entries.length; i += 1000)
    await datastore.createEntries(entries.slice(i, i + 1000), 'bench');
  return entries.length;
}
