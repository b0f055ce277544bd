import { chmod, mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Command, InvalidArgumentError, Option } from 'commander';
import { type OutputFormat, withOutput } from '../../host/index.js';
import { ENDPOINT_SOCKET_ENV, type X509Bundle } from '../../spiffe/index.js';
import type { WorkloadApiClient, X509Context } from '../../workload-api/client.js';
import { DEFAULT_SOCKET_PATH } from '../../workload-api/server.js';

interface Common {
  socketPath?: string;
  output: OutputFormat;
  /** Milliseconds to wait for the answer; the commands that take one answer take `--timeout`. */
  timeout?: number;
}

const DURATION_MS = /^([1-9][0-9]*)(ms|s|m)$/;
const UNIT_MS = { ms: 1, s: 1000, m: 60_000 } as const;

/** `--timeout`, as SPIRE's `-timeout` (default 5s): a duration such as 500ms, 5s or 1m. */
function timeoutOption(): Option {
  return new Option('--timeout <duration>', 'how long to wait for the answer, e.g. 500ms, 5s, 1m')
    .default(5000, '5s')
    .argParser((text): number => {
      const match = DURATION_MS.exec(text);
      if (match?.[1] === undefined || match[2] === undefined)
        throw new InvalidArgumentError('allowed: a duration such as 500ms, 5s or 1m');
      return Number(match[1]) * UNIT_MS[match[2] as keyof typeof UNIT_MS];
    });
}

/** The agent gave no answer within `--timeout`. */
class ApiTimeoutError extends Error {
  override name = 'ApiTimeoutError';
  readonly code = 'ERR_WORKLOADAPI_TIMEOUT';
  constructor(address: string, timeoutMs: number) {
    super(
      `no answer from the Workload API at ${address} within ${timeoutMs} ms; is the agent running and serving this socket? (raise --timeout if it is busy)`,
    );
  }
}

/** Settles as `work` does, or rejects with ApiTimeoutError when `timeoutMs` passes first. */
async function within<T>(work: Promise<T>, address: string, timeoutMs: number | undefined): Promise<T> {
  if (timeoutMs === undefined) return work;
  let timer: NodeJS.Timeout | undefined;
  const expired = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new ApiTimeoutError(address, timeoutMs)), timeoutMs);
  });
  try {
    return await Promise.race([work, expired]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * `--socket-path`, else `SPIFFE_ENDPOINT_SOCKET`, else the agent's default socket. The client's
 * module is imported here, not with this file: `run` builds these commands too and never calls them.
 */
async function clientFor(options: Common): Promise<WorkloadApiClient> {
  const { WorkloadApiClient } = await import('../../workload-api/client.js');
  if (options.socketPath !== undefined)
    return new WorkloadApiClient({ address: `unix://${options.socketPath}` });
  if (process.env[ENDPOINT_SOCKET_ENV] !== undefined) return new WorkloadApiClient();
  return new WorkloadApiClient({ address: `unix://${DEFAULT_SOCKET_PATH}` });
}

function withCommon(command: Command): Command {
  return withOutput(command).option(
    '--socket-path <path>',
    `Workload API socket (default: $${ENDPOINT_SOCKET_ENV}, else ${DEFAULT_SOCKET_PATH})`,
  );
}

function write(command: Command, text: string): void {
  const out = command.configureOutput().writeOut;
  if (out === undefined) process.stdout.write(text);
  else out(text);
}

/** Runs `action` with a client; its errors (coded Workload API and SPIFFE errors) are reported by runCli. */
async function withClient(options: Common, action: (client: WorkloadApiClient) => Promise<void>) {
  let client: WorkloadApiClient | undefined;
  try {
    client = await clientFor(options);
    await within(action(client), client.address, options.timeout);
  } finally {
    client?.close();
  }
}

function pemOf(bundle: X509Bundle): string {
  return bundle.marshalPem();
}

/** X.509 context as data: IDs, hints, validity and certificates; never private keys. */
function x509Json(context: X509Context) {
  return {
    svids: context.svids.map(({ svid, hint }) => ({
      spiffe_id: svid.id.toString(),
      hint,
      not_after: new Date(svid.certificates[0]?.validTo ?? 0).toISOString(),
      certificates: svid.marshalPem().certificates,
    })),
    bundles: Object.fromEntries(
      context.bundles.bundles().map((b) => [b.trustDomain.idString(), pemOf(b.toX509Bundle())]),
    ),
  };
}

function x509Text(context: X509Context): string {
  const lines = [`Received ${context.svids.length} svid(s)`];
  for (const { svid, hint } of context.svids) {
    lines.push('', `SPIFFE ID:         ${svid.id}`, `Hint:              ${hint || '(none)'}`);
    lines.push(`Valid until:       ${new Date(svid.certificates[0]?.validTo ?? 0).toISOString()}`);
    lines.push(`Intermediates:     ${svid.certificates.length - 1}`);
  }
  lines.push(
    '',
    `Trust domains:     ${context.bundles
      .bundles()
      .map((b) => b.trustDomain.name)
      .join(', ')}`,
  );
  return `${lines.join('\n')}\n`;
}

/**
 * Writes each SVID i as `svid.i.pem` (chain, leaf first) and `svid.i.key` (PKCS#8, 0600), the
 * bundle of its trust domain as `bundle.i.pem`, and each other trust domain's bundle as
 * `federated_bundle.i.j.pem`. Returns the files written.
 */
async function writeX509(dir: string, context: X509Context): Promise<string[]> {
  await mkdir(dir, { recursive: true, mode: 0o755 });
  const written: string[] = [];
  const put = async (name: string, text: string, mode: number) => {
    const path = join(dir, name);
    await writeFile(path, text, { mode });
    // writeFile applies mode only when it creates the file; an existing key file must become 0600 too.
    await chmod(path, mode);
    written.push(path);
  };
  for (const [i, { svid }] of context.svids.entries()) {
    const { certificates, privateKey } = svid.marshalPem();
    await put(`svid.${i}.key`, privateKey, 0o600);
    await put(`svid.${i}.pem`, certificates, 0o644);
    const own = context.bundles.getX509BundleForTrustDomain(svid.id.trustDomain);
    if (own !== undefined) await put(`bundle.${i}.pem`, pemOf(own), 0o644);
    const federated = context.bundles.bundles().filter((b) => !b.trustDomain.equals(svid.id.trustDomain));
    for (const [j, b] of federated.entries()) {
      await put(`federated_bundle.${i}.${j}.pem`, pemOf(b.toX509Bundle()), 0o644);
    }
  }
  return written;
}

function fetchCommand(): Command {
  const x509: Command = withCommon(new Command('x509'))
    .description("fetch this process's X.509-SVIDs and bundles")
    .addOption(timeoutOption())
    .option('--write <dir>', 'write svid.N.pem, svid.N.key (0600), bundle.N.pem and federated bundles here')
    .action(async (options: Common & { write?: string }) =>
      withClient(options, async (client) => {
        const context = await client.fetchX509Context();
        const files = options.write === undefined ? [] : await writeX509(options.write, context);
        if (options.output === 'json') write(x509, `${JSON.stringify({ ...x509Json(context), files })}\n`);
        else write(x509, `${x509Text(context)}${files.map((f) => `Wrote ${f}\n`).join('')}`);
      }),
    );

  const jwt: Command = withCommon(new Command('jwt'))
    .description("fetch this process's JWT-SVIDs for an audience")
    .addOption(timeoutOption())
    .requiredOption('--audience <aud...>', 'audience(s) of the token')
    .option('--spiffe-id <id>', 'only the token of this identity')
    .action(async (options: Common & { audience: string[]; spiffeId?: string }) =>
      withClient(options, async (client) => {
        const svids = await client.fetchJwtSvids({ audience: options.audience, spiffeId: options.spiffeId });
        const data = svids.map(({ svid, hint }) => ({
          spiffe_id: svid.id.toString(),
          hint,
          svid: svid.token,
        }));
        if (options.output === 'json') write(jwt, `${JSON.stringify({ svids: data })}\n`);
        else write(jwt, data.map((s) => `token(${s.spiffe_id}):\n\t${s.svid}\n`).join(''));
      }),
    );

  const jwtBundles: Command = withCommon(new Command('jwt-bundles'))
    .description('fetch the JWT bundles (JWK Sets) by trust domain')
    .addOption(timeoutOption())
    .action(async (options: Common) =>
      withClient(options, async (client) => {
        const set = await client.fetchJwtBundles();
        const data = Object.fromEntries(
          set
            .bundles()
            .map((b) => [b.trustDomain.idString(), JSON.parse(b.toJwtBundle().marshal()) as unknown]),
        );
        if (options.output === 'json') write(jwtBundles, `${JSON.stringify({ bundles: data })}\n`);
        else
          write(
            jwtBundles,
            Object.entries(data)
              .map(([td, jwks]) => `bundle(${td}):\n\t${JSON.stringify(jwks)}\n`)
              .join(''),
          );
      }),
    );

  return new Command('fetch')
    .description('fetch SVIDs and bundles from the Workload API')
    .addCommand(x509)
    .addCommand(jwt)
    .addCommand(jwtBundles);
}

function validateCommand(): Command {
  const jwt: Command = withCommon(new Command('jwt'))
    .description('have the agent validate a JWT-SVID for an audience')
    .addOption(timeoutOption())
    .requiredOption('--audience <aud>', 'audience the token must carry')
    .requiredOption('--svid <token>', 'the JWT-SVID')
    .action(async (options: Common & { audience: string; svid: string }) =>
      withClient(options, async (client) => {
        const { spiffeId, claims } = await client.validateJwtSvid(options.svid, options.audience);
        if (options.output === 'json')
          write(jwt, `${JSON.stringify({ spiffe_id: spiffeId.toString(), claims })}\n`);
        else write(jwt, `SVID is valid.\nSPIFFE ID : ${spiffeId}\nClaims    : ${JSON.stringify(claims)}\n`);
      }),
    );
  return new Command('validate').description('validate SVIDs through the Workload API').addCommand(jwt);
}

function watchCommand(): Command {
  const watch: Command = withCommon(new Command('watch'))
    .description('print every X.509-SVID update until interrupted')
    .action(async (options: Common) =>
      withClient(options, async (client) => {
        const abort = new AbortController();
        const stop = () => abort.abort();
        process.once('SIGINT', stop);
        process.once('SIGTERM', stop);
        try {
          await client.watchX509Context(
            {
              onUpdate: (context) =>
                write(
                  watch,
                  options.output === 'json' ? `${JSON.stringify(x509Json(context))}\n` : x509Text(context),
                ),
              onError: (error) => process.stderr.write(`${error.message}; retrying\n`),
            },
            abort.signal,
          );
        } finally {
          process.off('SIGINT', stop);
          process.off('SIGTERM', stop);
        }
      }),
    );
  return watch;
}

/**
 * `api fetch x509|jwt|jwt-bundles`, `api validate jwt`, `api watch`: talk to a SPIFFE Workload API
 * as the current process, the way SPIRE's `spire-agent api` does. Output goes through commander's
 * output configuration; `--output json` prints data only.
 */
export function apiCommand(): Command {
  return new Command('api')
    .description('use the SPIFFE Workload API as this process')
    .addCommand(fetchCommand())
    .addCommand(validateCommand())
    .addCommand(watchCommand());
}
