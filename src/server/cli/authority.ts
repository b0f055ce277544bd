/**
 * `localauthority x509|jwt show|prepare|activate|taint|revoke`, `bundle show|list|count|set|delete`,
 * `x509 mint`, `jwt mint`: the CA, as SPIRE's CLI names these jobs.
 *
 * @module
 */

import { chmodSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { Command, Option } from 'commander';
import { toPem } from '../../spiffe/der.js';
import { createCsr, createKeySigner, newKeyPair, SpiffeId } from '../../spiffe/index.js';
import type { AgentReadinessMessage, AuthorityMessage } from '../admin/messages.js';
import {
  type AdminOptions,
  adminCommand,
  CliError,
  collect,
  errorCodeOf,
  integerFlag,
  print,
  printJson,
  trustDomainFlag,
  withClient,
} from './common.js';

function formatAuthority(a: AuthorityMessage): string {
  return [
    `Authority ID : ${a.authority_id}`,
    `Slot         : ${a.slot}`,
    `State        : ${a.state}`,
    `Not before   : ${new Date(a.not_before * 1000).toISOString()}`,
    `Not after    : ${new Date(a.not_after * 1000).toISOString()}`,
    `Tainted      : ${a.tainted}`,
  ].join('\n');
}

/**
 * Where the agents stand with the active X.509 CA, and what that makes safe: agents that have not
 * renewed under it may not trust it yet, and only reach the server through the CA it replaced.
 */
function formatReadiness(r: AgentReadinessMessage, revoked: boolean): string {
  const behind = r.agents - r.current;
  const lines = [
    `Agents       : ${r.current} of ${r.agents} renewed under the active CA ${r.active_authority_id}`,
  ];
  if (behind > 0) {
    const more = behind > r.behind.length ? ` (and ${behind - r.behind.length} more)` : '';
    lines.push(`${revoked ? 'Cut off' : 'Not yet'}      : ${r.behind.join(', ')}${more}`);
  }
  if (revoked)
    lines.push(
      behind === 0
        ? 'Revocation   : no agent was cut off'
        : 'Revocation   : the agents above cannot verify the server any more; copy "bundle show" into their data_dir/bundle.pem (join-token agents also need a new token)',
    );
  else
    lines.push(
      behind === 0
        ? 'Revocation   : safe; every agent trusts the active CA, the replaced one can be tainted and revoked'
        : 'Revocation   : not yet safe; running agents renew at their next sync, the replaced CA cross-signs the active one until then (watch with "localauthority x509 show")',
    );
  return lines.join('\n');
}

function authorityKind(kind: 'x509' | 'jwt'): Command {
  const command = new Command(kind).description(
    `manage the ${kind === 'x509' ? 'X.509 CA' : 'JWT signing'} keys`,
  );
  const report = (flags: AdminOptions, authority: AuthorityMessage, done: string) => {
    if (flags.output === 'json') printJson(authority);
    else {
      const readiness = authority.readiness
        ? `\n${formatReadiness(authority.readiness, done === 'Revoked:')}`
        : '';
      print(`${done}\n${formatAuthority(authority)}${readiness}`);
    }
  };
  command.addCommand(
    adminCommand(new Command('show').description('show the active, prepared and old keys')).action(
      async (flags: AdminOptions) => {
        const { authorities, readiness } = await withClient(flags, (c) =>
          c.call('LocalAuthorityService', 'ListAuthorities', { kind }),
        );
        if (flags.output === 'json') printJson({ authorities, ...(readiness ? { readiness } : {}) });
        else
          print(
            [
              ...authorities.map(formatAuthority),
              ...(readiness ? [formatReadiness(readiness, false)] : []),
            ].join('\n\n'),
          );
      },
    ),
  );
  command.addCommand(
    adminCommand(
      new Command('prepare').description('generate the next key now and publish it in the bundle'),
    ).action(async (flags: AdminOptions) => {
      report(
        flags,
        await withClient(flags, (c) => c.call('LocalAuthorityService', 'Prepare', { kind })),
        'Prepared:',
      );
    }),
  );
  command.addCommand(
    adminCommand(new Command('activate').description('make the prepared key the signing key now')).action(
      async (flags: AdminOptions) => {
        report(
          flags,
          await withClient(flags, (c) => c.call('LocalAuthorityService', 'Activate', { kind })),
          'Activated:',
        );
      },
    ),
  );
  for (const [name, method, description] of [
    ['taint', 'Taint', 'mark a replaced (old) key as compromised'],
    ['revoke', 'Revoke', 'remove a tainted key from the bundle and destroy it'],
  ] as const) {
    const sub = new Command(name)
      .description(description)
      .requiredOption('--authority-id <id>', 'key id, as "show" prints it');
    if (name === 'revoke' && kind === 'x509')
      sub.option('--force', 'revoke even if agents that have not renewed under the active CA are cut off');
    command.addCommand(
      adminCommand(sub).action(async (flags: AdminOptions & { authorityId: string; force?: boolean }) => {
        const authority = await withClient(flags, (c) =>
          c.call('LocalAuthorityService', method, {
            kind,
            authority_id: flags.authorityId,
            force: flags.force === true,
          }),
        );
        report(flags, authority, name === 'taint' ? 'Tainted:' : 'Revoked:');
      }),
    );
  }
  return command;
}

export function localAuthorityCommand(): Command {
  return new Command('localauthority')
    .description("manage the server's own CA keys (rotation by hand)")
    .addCommand(authorityKind('x509'))
    .addCommand(authorityKind('jwt'));
}

type BundleFormat = 'pem' | 'spiffe';
const formatOption = () =>
  new Option('--format <format>', 'bundle format')
    .choices(['pem', 'spiffe'])
    .default('pem' satisfies BundleFormat);

export function bundleCommand(): Command {
  const bundle = new Command('bundle').description('show the own bundle; manage federated bundles');
  bundle.addCommand(
    adminCommand(
      new Command('show').description("print this server's trust bundle").addOption(formatOption()),
    ).action(async (flags: AdminOptions & { format: BundleFormat }) => {
      const own = await withClient(flags, (c) => c.call('BundleService', 'GetBundle', {}));
      if (flags.output === 'json') printJson(own);
      else print(flags.format === 'pem' ? own.x509_pem : own.document);
    }),
  );
  bundle.addCommand(
    adminCommand(
      new Command('list')
        .description('print the federated bundles')
        .option('--id <trust-domain>', 'only this foreign trust domain (example.org or spiffe://example.org)')
        .addOption(formatOption()),
    ).action(async (flags: AdminOptions & { id?: string; format: BundleFormat }) => {
      const only = flags.id === undefined ? undefined : trustDomainFlag('--id', flags.id);
      const all = await withClient(flags, (c) => c.call('BundleService', 'ListFederatedBundles', {}));
      const bundles = all.bundles.filter((b) => only === undefined || b.trust_domain === only);
      if (flags.output === 'json') printJson({ bundles });
      else {
        for (const b of bundles)
          print(
            `****************************************\n* ${b.trust_domain}\n****************************************\n${b.refused === '' ? '' : `refused (agents leave it out; replace it with bundle set): ${b.refused}\n`}${flags.format === 'pem' ? b.x509_pem : b.document}`,
          );
      }
    }),
  );
  bundle.addCommand(
    adminCommand(new Command('count').description('count the federated bundles')).action(
      async (flags: AdminOptions) => {
        const { bundles } = await withClient(flags, (c) =>
          c.call('BundleService', 'ListFederatedBundles', {}),
        );
        if (flags.output === 'json') printJson({ count: bundles.length });
        else print(`${bundles.length} federated ${bundles.length === 1 ? 'bundle' : 'bundles'}`);
      },
    ),
  );
  bundle.addCommand(
    adminCommand(
      new Command('set')
        .description("store a federated trust domain's bundle (replacing any)")
        .requiredOption(
          '--id <trust-domain>',
          'the foreign trust domain (example.org or spiffe://example.org)',
        )
        .option('--path <file>', 'bundle file; - or omitted reads standard input')
        .addOption(formatOption()),
    ).action(async (flags: AdminOptions & { id: string; path?: string; format: BundleFormat }) => {
      const trustDomain = trustDomainFlag('--id', flags.id);
      const document = readFileSync(flags.path === undefined || flags.path === '-' ? 0 : flags.path, 'utf8');
      const stored = await withClient(flags, (c) =>
        c.call('BundleService', 'SetFederatedBundle', {
          trust_domain: trustDomain,
          document,
          format: flags.format,
        }),
      );
      if (flags.output === 'json') printJson(stored);
      else print(`Bundle for ${stored.trust_domain} set (sequence ${stored.sequence}).`);
    }),
  );
  bundle.addCommand(
    adminCommand(
      new Command('delete')
        .description('forget a federated bundle')
        .requiredOption(
          '--id <trust-domain>',
          'the foreign trust domain (example.org or spiffe://example.org)',
        )
        .addOption(
          new Option(
            '--mode <mode>',
            'entries federating with it: restrict refuses while there are any, dissociate takes the trust domain out of them, delete deletes them',
          )
            .choices(['restrict', 'dissociate', 'delete'])
            .default('restrict'),
        ),
    ).action(async (flags: AdminOptions & { id: string; mode: string }) => {
      const trustDomain = trustDomainFlag('--id', flags.id);
      const deleted = await withClient(flags, (c) =>
        c.call('BundleService', 'DeleteFederatedBundle', { trust_domain: trustDomain, mode: flags.mode }),
      );
      if (flags.output === 'json') printJson(deleted);
      else
        print(
          `Bundle for ${deleted.trust_domain} deleted.${
            flags.mode === 'restrict'
              ? ''
              : ` Entries federating with it were ${flags.mode === 'delete' ? 'deleted' : 'dissociated from it'}.`
          }`,
        );
    }),
  );
  return bundle;
}

interface X509MintFlags extends AdminOptions {
  spiffeId: string;
  ttl?: number;
  dns?: string[];
  write?: string;
}

export function x509Command(): Command {
  return new Command('x509').description('X.509-SVIDs').addCommand(
    adminCommand(
      new Command('mint')
        .description('mint an X.509-SVID; the private key is made here and never sent')
        .requiredOption('--spiffe-id <id>', 'SPIFFE ID of the SVID')
        .option('--ttl <seconds>', 'lifetime (default: default_x509_svid_ttl)', integerFlag('--ttl'))
        .option('--dns <name>', 'DNS SAN, repeatable', collect)
        .option('--write <dir>', 'write svid.pem, key.pem (0600) and bundle.pem there instead of printing'),
    ).action(async (flags: X509MintFlags) => {
      let spiffeId: SpiffeId;
      try {
        spiffeId = SpiffeId.parse(flags.spiffeId);
      } catch (error) {
        throw new CliError(errorCodeOf(error) ?? 'ERR_CLI_USAGE', `--spiffe-id: ${(error as Error).message}`);
      }
      const { privateKey } = newKeyPair('ec', { namedCurve: 'P-256' });
      const csr = await createCsr(
        { spiffeId, ...(flags.dns ? { dnsNames: flags.dns } : {}) },
        createKeySigner(privateKey),
      );
      const { minted, bundle } = await withClient(flags, async (c) => ({
        minted: await c.call('SvidService', 'MintX509Svid', { csr, ttl: flags.ttl ?? 0 }),
        bundle: await c.call('BundleService', 'GetBundle', {}),
      }));
      const svidPem = minted.chain.map((der) => toPem('CERTIFICATE', der)).join('');
      const keyPem = privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
      if (flags.write !== undefined) {
        mkdirSync(flags.write, { recursive: true, mode: 0o700 });
        writeFileSync(join(flags.write, 'svid.pem'), svidPem, { mode: 0o644 });
        writeFileSync(join(flags.write, 'key.pem'), keyPem, { mode: 0o600 });
        chmodSync(join(flags.write, 'key.pem'), 0o600);
        writeFileSync(join(flags.write, 'bundle.pem'), bundle.x509_pem, { mode: 0o644 });
        if (flags.output === 'json') printJson({ expires_at: minted.expires_at, dir: flags.write });
        else print(`X.509-SVID written to ${join(flags.write, 'svid.pem')} (key.pem, bundle.pem beside it)`);
        return;
      }
      if (flags.output === 'json') {
        printJson({ svid: svidPem, key: keyPem, bundle: bundle.x509_pem, expires_at: minted.expires_at });
      } else print(`X509-SVID:\n${svidPem}\nPrivate key:\n${keyPem}\nRoot CAs:\n${bundle.x509_pem}`);
    }),
  );
}

/**
 * Writes `text` to `path` as a new 0600 file renamed into place: an existing file (or a symlink
 * planted there) is replaced, never written through, and no reader sees a wider mode or half a token.
 */
function writePrivateFile(path: string, text: string): void {
  const temporary = join(dirname(path), `.${basename(path)}.${process.pid}.tmp`);
  try {
    writeFileSync(temporary, text, { mode: 0o600, flag: 'wx' });
    renameSync(temporary, path);
  } catch (error) {
    rmSync(temporary, { force: true });
    throw new CliError('ERR_CLI_FILE', `--write ${path}: ${(error as Error).message}`);
  }
}

export function jwtCommand(): Command {
  return new Command('jwt').description('JWT-SVIDs').addCommand(
    adminCommand(
      new Command('mint')
        .description('mint a JWT-SVID')
        .requiredOption('--spiffe-id <id>', 'SPIFFE ID (sub)')
        .requiredOption('--audience <aud>', 'audience, repeatable', collect)
        .option('--ttl <seconds>', 'lifetime (default: default_jwt_svid_ttl)', integerFlag('--ttl'))
        .option('--write <file>', 'write the token to this file (0600, replacing it) instead of printing it'),
    ).action(
      async (
        flags: AdminOptions & { spiffeId: string; audience: string[]; ttl?: number; write?: string },
      ) => {
        const minted = await withClient(flags, (c) =>
          c.call('SvidService', 'MintJwtSvid', {
            spiffe_id: flags.spiffeId,
            audience: flags.audience,
            ttl: flags.ttl ?? 0,
          }),
        );
        if (flags.write !== undefined) {
          writePrivateFile(flags.write, `${minted.token}\n`);
          if (flags.output === 'json') printJson({ expires_at: minted.expires_at, file: flags.write });
          else print(`JWT-SVID written to ${flags.write}`);
          return;
        }
        if (flags.output === 'json') printJson(minted);
        else print(minted.token);
      },
    ),
  );
}
