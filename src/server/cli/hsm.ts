/**
 * @module
 * `ironroot-server hsm …`: operator commands for the PKCS#11 token that holds the CA keys.
 *
 * Every command resolves its key store through `keyStoreUri`: `--uri`, or the `key_manager` of the
 * server config given with `--config`. The PIN is never accepted on the command line: the URI names a
 * pin-source instead.
 */
import { Command, Option } from 'commander';
import {
  formatPkcs11Uri,
  HsmError,
  type InspectedKey,
  isKeyType,
  KEY_TYPES,
  type KeyType,
  Pkcs11KeyManager,
  type Pkcs11Step,
  type Pkcs11Uri,
  parsePkcs11Uri,
} from '../../hsm/index.js';
import { loadConfig } from '../config/load.js';
import type { ServerConfig } from '../config/schema.js';
import { CliError, withOutput } from './common.js';

type Output = 'text' | 'json';

interface KeyStoreOptions {
  readonly uri?: string;
  readonly config?: string;
}

interface OutputOptions {
  readonly output: Output;
}

const URI_HELP =
  "the token, as an RFC 7512 URI: 'pkcs11:token=LABEL;module-path=/path/module.so;pin-source=file:/path/pin' (pin-source may also be env:NAME)";

/** The server config named by --config, when there is one. */
function serverConfig(options: KeyStoreOptions): ServerConfig | undefined {
  return options.config === undefined ? undefined : loadConfig({ file: options.config });
}

/** The key store a command works on: --uri, or the key_manager of the --config file. */
export function keyStoreUri(options: KeyStoreOptions, config = serverConfig(options)): Pkcs11Uri {
  if (options.uri !== undefined && config !== undefined) {
    throw new HsmError('ERR_HSM_URI', 'give either --uri or --config, not both');
  }
  if (config !== undefined) {
    if (!config.key_manager.startsWith('pkcs11:')) {
      throw new HsmError(
        'ERR_HSM_URI',
        `key_manager in ${options.config} is "${config.key_manager.split(':')[0]}:", not a PKCS#11 token; hsm commands work on pkcs11: key stores only`,
      );
    }
    return parsePkcs11Uri(config.key_manager);
  }
  if (options.uri === undefined) {
    throw new HsmError(
      'ERR_HSM_URI',
      "no key store given; pass --uri 'pkcs11:token=…;module-path=…;pin-source=…' or --config with the server config",
    );
  }
  return parsePkcs11Uri(options.uri);
}

function print(text: string): void {
  process.stdout.write(`${text}\n`);
}

function printJson(value: unknown): void {
  print(JSON.stringify(value, null, 2));
}

/** Adds the options every hsm command shares. */
function withKeyStore(command: Command, output: boolean): Command {
  command.option('--uri <pkcs11-uri>', URI_HELP);
  command.option('-c, --config <file>', 'server config file: use its key_manager instead of --uri');
  if (output) withOutput(command);
  return command;
}

async function withManager<T>(uri: Pkcs11Uri, action: (keys: Pkcs11KeyManager) => Promise<T>): Promise<T> {
  const keys = await Pkcs11KeyManager.open(uri);
  try {
    return await action(keys);
  } finally {
    await keys.close();
  }
}

interface CheckResult {
  readonly check: string;
  readonly ok: boolean;
  readonly detail: string;
}

/** Which start-up step an error belongs to, so `hsm check` can say where it stopped. */
function failedStep(error: HsmError): string {
  switch (error.code) {
    case 'ERR_HSM_MODULE_NOT_FOUND':
      return 'module';
    case 'ERR_HSM_TOKEN_NOT_FOUND':
      return 'token';
    case 'ERR_HSM_PIN_SOURCE':
    case 'ERR_HSM_PIN_INCORRECT':
      return 'login';
    default:
      return 'open';
  }
}

function keyCheck(key: InspectedKey): CheckResult {
  return {
    check: 'key',
    ok: key.problems.length === 0,
    detail:
      key.problems.length === 0
        ? `${key.id} (${key.type ?? 'unknown type'})`
        : `${key.id}: ${key.problems.join('; ')}`,
  };
}

/** `hsm check`: module loads, token found, login works, keys present and protected. */
export async function runCheck(
  uri: Pkcs11Uri,
  required: readonly string[],
  output: Output,
): Promise<boolean> {
  const results: CheckResult[] = [];
  const wanted = [...required, ...(uri.object === undefined ? [] : [uri.object])];
  try {
    const keys = await Pkcs11KeyManager.open(uri, {
      onStep: (step: Pkcs11Step) => results.push({ check: step.step, ok: true, detail: step.detail }),
    });
    try {
      // Named keys are examined alone: a shared token may hold other users' keys, sound or not.
      if (wanted.length > 0) {
        for (const id of wanted) {
          const key = await keys.inspectKey(id);
          results.push(
            key === undefined
              ? {
                  check: 'key',
                  ok: false,
                  detail: `${id}: not on the token (ironroot-server hsm keys generate ${id})`,
                }
              : keyCheck(key),
          );
        }
      } else {
        const inspected = await keys.inspectKeys();
        results.push(...inspected.map(keyCheck));
        if (inspected.length === 0) results.push({ check: 'key', ok: true, detail: 'no keys yet' });
      }
    } finally {
      await keys.close();
    }
  } catch (error) {
    if (!(error instanceof HsmError)) throw error;
    results.push({ check: failedStep(error), ok: false, detail: `${error.code}: ${error.message}` });
  }
  const ok = results.every((result) => result.ok);
  if (output === 'json') {
    printJson({ uri: formatPkcs11Uri(uri), ok, checks: results });
  } else {
    for (const result of results)
      print(`${result.ok ? 'ok  ' : 'FAIL'}  ${result.check.padEnd(6)}  ${result.detail}`);
    print(ok ? 'hsm check passed' : 'hsm check FAILED');
  }
  return ok;
}

/** Whether the server's datastore names a key: `unknown` when there is no datastore to ask. */
type Usage = 'in use' | 'orphan' | 'unknown';

/**
 * The key ids the CA journal in the config's datastore (SQLite in its data dir, or PostgreSQL)
 * names, or why they cannot be known. Loaded lazily, so the other hsm commands do not pay for it.
 */
async function journaledKeyIds(
  config: ServerConfig | undefined,
): Promise<{ ids: ReadonlySet<string> } | { unknown: string }> {
  if (config === undefined) return { unknown: 'no --config, so no datastore to ask' };
  const { storedCaKeyIds } = await import('../datastore/open.js');
  try {
    return { ids: new Set(await storedCaKeyIds(config)) };
  } catch (error) {
    return { unknown: (error as Error).message };
  }
}

export async function runList(
  uri: Pkcs11Uri,
  output: Output,
  config: ServerConfig | undefined,
): Promise<void> {
  const keys = await withManager(uri, (manager) => manager.inspectKeys());
  const journal = await journaledKeyIds(config);
  const usage = (id: string): Usage => {
    if (!('ids' in journal)) return 'unknown';
    return journal.ids.has(id) ? 'in use' : 'orphan';
  };
  if ('unknown' in journal)
    process.stderr.write(`datastore use of the keys is unknown: ${journal.unknown}\n`);
  if (output === 'json') {
    printJson(
      keys.map((key) => ({
        id: key.id,
        type: key.type ?? null,
        ok: key.problems.length === 0,
        problems: key.problems,
        usage: usage(key.id),
      })),
    );
    return;
  }
  if (keys.length === 0) {
    print('no keys on the token');
    return;
  }
  for (const key of keys) {
    print(
      `${key.id.padEnd(24)}  ${(key.type ?? '?').padEnd(8)}  ${usage(key.id).padEnd(7)}  ${key.problems.length === 0 ? 'ok' : `REFUSED: ${key.problems.join('; ')}`}`,
    );
  }
}

export async function runGenerate(uri: Pkcs11Uri, id: string, type: KeyType, output: Output): Promise<void> {
  const key = await withManager(uri, (manager) => manager.generateKey(id, type));
  const publicKeyPem = key.publicKey.export({ type: 'spki', format: 'pem' }).toString();
  if (output === 'json') {
    printJson({ id: key.id, type: key.type, publicKeyPem });
    return;
  }
  print(`generated ${key.type} key "${key.id}" on the token (sensitive, never extractable, sign only)`);
  process.stdout.write(publicKeyPem);
}

export async function runDestroy(uri: Pkcs11Uri, id: string): Promise<void> {
  await withManager(uri, (manager) => manager.destroyKey(id));
  print(`destroyed key "${id}" (private and public objects)`);
}

export function hsmCommand(): Command {
  const hsm = new Command('hsm').description('check and manage the CA keys held in a PKCS#11 token');

  withKeyStore(
    hsm
      .command('check')
      .description('check that the module loads, the token is there, the PIN works and keys are protected')
      .option('--key <id...>', 'key ids that must be present (the URI object= is required too)', []),
    true,
  ).action(async (options: KeyStoreOptions & OutputOptions & { key: string[] }) => {
    if (!(await runCheck(keyStoreUri(options), options.key, options.output))) process.exitCode = 1;
  });

  const keys = hsm.command('keys').description('list, generate and destroy keys on the token');

  withKeyStore(
    keys
      .command('list')
      .description(
        "list the private keys on the token, whether ironroot accepts them, and (with --config) whether the server's datastore uses them (in use) or not (orphan)",
      ),
    true,
  ).action(async (options: KeyStoreOptions & OutputOptions) => {
    const config = serverConfig(options);
    await runList(keyStoreUri(options, config), options.output, config);
  });

  withKeyStore(
    keys
      .command('generate')
      .description('generate a key pair on the token: sensitive, not extractable, sign only')
      .argument('<id>', 'key id, stored as CKA_LABEL and CKA_ID')
      .addOption(new Option('--type <type>', 'key type').choices([...KEY_TYPES]).default('ec-p256')),
    true,
  ).action(async (id: string, options: KeyStoreOptions & OutputOptions & { type: string }) => {
    if (!isKeyType(options.type)) throw new CliError('ERR_CLI_USAGE', `unknown key type ${options.type}`);
    await runGenerate(keyStoreUri(options), id, options.type, options.output);
  });

  withKeyStore(
    keys
      .command('destroy')
      .description('destroy a key pair on the token, for good')
      .argument('<id>', 'key id')
      .option('--yes', 'confirm: the key cannot be recovered afterwards', false),
    false,
  ).action(async (id: string, options: KeyStoreOptions & { yes: boolean }) => {
    if (!options.yes)
      throw new CliError('ERR_CLI_USAGE', `destroying key "${id}" cannot be undone; repeat with --yes`);
    await runDestroy(keyStoreUri(options), id);
  });

  return hsm;
}
