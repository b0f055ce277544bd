/**
 * `federation create|list|show|update|delete`: federation relationships, with SPIRE's flags in
 * kebab-case (-trustDomain → --trust-domain, -bundleEndpointURL → --bundle-endpoint-url, …).
 *
 * @module
 */
import { readFileSync } from 'node:fs';
import { Command, Option } from 'commander';
import type { FederationRelationshipMessage, FederationRelationshipRequest } from '../admin/messages.js';
import {
  type AdminOptions,
  adminCommand,
  CliError,
  print,
  printJson,
  trustDomainFlag,
  withClient,
} from './common.js';

type Profile = 'https_web' | 'https_spiffe';
type BundleFormat = 'spiffe' | 'pem';

interface FederationFlags extends AdminOptions {
  trustDomain: string;
  bundleEndpointUrl?: string;
  bundleEndpointProfile?: Profile;
  endpointSpiffeId?: string;
  trustDomainBundlePath?: string;
  trustDomainBundleFormat?: BundleFormat;
}

const trustDomainHelp = 'the foreign trust domain (partner.org or spiffe://partner.org)';

function relationshipOptions(command: Command, create: boolean): Command {
  const url = new Option('--bundle-endpoint-url <url>', "https:// URL of the trust domain's bundle endpoint");
  const profile = new Option(
    '--bundle-endpoint-profile <profile>',
    'how the endpoint is authenticated: https_web (Web PKI) or https_spiffe (its SVID, checked with the trust domain bundle)',
  ).choices(['https_web', 'https_spiffe']);
  return command
    .requiredOption('--trust-domain <trust-domain>', trustDomainHelp)
    .addOption(create ? url.makeOptionMandatory() : url)
    .addOption(create ? profile.makeOptionMandatory() : profile)
    .option(
      '--endpoint-spiffe-id <id>',
      "SPIFFE ID of the endpoint server (https_spiffe only; in the relationship's trust domain)",
    )
    .option(
      '--trust-domain-bundle-path <file>',
      'bundle of the trust domain to store with the relationship (- reads standard input)',
    )
    .addOption(
      new Option('--trust-domain-bundle-format <format>', 'format of that bundle (default: pem)').choices([
        'spiffe',
        'pem',
      ]),
    );
}

/** The bundle fields of a request: the file's text and its format, or nothing without a path. */
function bundleFields(
  flags: FederationFlags,
): Pick<FederationRelationshipRequest, 'trust_domain_bundle' | 'trust_domain_bundle_format'> {
  if (flags.trustDomainBundlePath === undefined) {
    if (flags.trustDomainBundleFormat !== undefined)
      throw new CliError('ERR_CLI_USAGE', '--trust-domain-bundle-format needs --trust-domain-bundle-path');
    return { trust_domain_bundle: '', trust_domain_bundle_format: '' };
  }
  const path = flags.trustDomainBundlePath;
  let document: string;
  try {
    document = readFileSync(path === '-' ? 0 : path, 'utf8');
  } catch (error) {
    throw new CliError('ERR_CLI_FILE', `--trust-domain-bundle-path ${path}: ${(error as Error).message}`);
  }
  if (document.trim() === '')
    throw new CliError('ERR_CLI_FILE', `--trust-domain-bundle-path ${path}: the file is empty`);
  return {
    trust_domain_bundle: document,
    trust_domain_bundle_format: flags.trustDomainBundleFormat ?? 'pem',
  };
}

export function formatRelationship(r: FederationRelationshipMessage): string {
  const time = (seconds: number) => new Date(seconds * 1000).toISOString();
  const lines = [
    `Trust domain            : ${r.trust_domain}`,
    `Bundle endpoint URL     : ${r.bundle_endpoint_url}`,
    `Bundle endpoint profile : ${r.bundle_endpoint_profile}`,
  ];
  if (r.endpoint_spiffe_id !== '') lines.push(`Endpoint SPIFFE ID      : ${r.endpoint_spiffe_id}`);
  lines.push(
    `Created at              : ${time(r.created_at)}`,
    `Updated at              : ${time(r.updated_at)}`,
  );
  if (r.bundle === null) lines.push('Bundle                  : none stored');
  else
    lines.push(
      `Bundle sequence         : ${r.bundle.sequence}`,
      `Bundle refresh hint     : ${r.bundle.refresh_hint === 0 ? 'none' : `${r.bundle.refresh_hint}s`}`,
      `Bundle updated at       : ${time(r.bundle.updated_at)}`,
    );
  return lines.join('\n');
}

function report(flags: AdminOptions, relationship: FederationRelationshipMessage, heading: string): void {
  if (flags.output === 'json') printJson(relationship);
  else print(`${heading}\n${formatRelationship(relationship)}`);
}

export function federationCommand(): Command {
  const federation = new Command('federation').description(
    'manage federation relationships: foreign trust domains and where their bundles are fetched',
  );

  adminCommand(
    relationshipOptions(federation.command('create').description('create a federation relationship'), true),
  ).action(async (flags: FederationFlags) => {
    const request: FederationRelationshipRequest = {
      relationship: {
        trust_domain: trustDomainFlag('--trust-domain', flags.trustDomain),
        bundle_endpoint_url: flags.bundleEndpointUrl ?? '',
        bundle_endpoint_profile: flags.bundleEndpointProfile ?? '',
        endpoint_spiffe_id: flags.endpointSpiffeId ?? '',
        created_at: 0,
        updated_at: 0,
        bundle: null,
      },
      ...bundleFields(flags),
    };
    const created = await withClient(flags, (c) =>
      c.call('FederationService', 'CreateFederationRelationship', request),
    );
    report(flags, created, 'Federation relationship created.');
  });

  adminCommand(
    federation.command('list').description('list the federation relationships, with their stored bundles'),
  ).action(async (flags: AdminOptions) => {
    const { relationships } = await withClient(flags, (c) =>
      c.call('FederationService', 'ListFederationRelationships', {}),
    );
    if (flags.output === 'json') {
      printJson({ relationships });
      return;
    }
    const n = relationships.length;
    print(`Found ${n} federation ${n === 1 ? 'relationship' : 'relationships'}`);
    for (const r of relationships) print(`\n${formatRelationship(r)}`);
  });

  adminCommand(
    federation
      .command('show')
      .description('show one federation relationship, with its stored bundle')
      .requiredOption('--trust-domain <trust-domain>', trustDomainHelp),
  ).action(async (flags: FederationFlags) => {
    const trustDomain = trustDomainFlag('--trust-domain', flags.trustDomain);
    const shown = await withClient(flags, (c) =>
      c.call('FederationService', 'GetFederationRelationship', { trust_domain: trustDomain }),
    );
    if (flags.output === 'json') printJson(shown);
    else print(formatRelationship(shown));
  });

  adminCommand(
    relationshipOptions(
      federation
        .command('update')
        .description(
          'change a federation relationship: flags given replace those fields, the rest stay (https_web drops the endpoint SPIFFE ID)',
        ),
      false,
    ),
  ).action(async (flags: FederationFlags) => {
    const trustDomain = trustDomainFlag('--trust-domain', flags.trustDomain);
    const bundle = bundleFields(flags);
    const updated = await withClient(flags, async (client) => {
      const current = await client.call('FederationService', 'GetFederationRelationship', {
        trust_domain: trustDomain,
      });
      const profile = flags.bundleEndpointProfile ?? current.bundle_endpoint_profile;
      const relationship: FederationRelationshipMessage = {
        ...current,
        bundle_endpoint_url: flags.bundleEndpointUrl ?? current.bundle_endpoint_url,
        bundle_endpoint_profile: profile,
        // Moving to https_web leaves no endpoint ID behind, unless one is given (and refused).
        endpoint_spiffe_id:
          flags.endpointSpiffeId ?? (profile === 'https_web' ? '' : current.endpoint_spiffe_id),
      };
      return client.call('FederationService', 'UpdateFederationRelationship', { relationship, ...bundle });
    });
    report(flags, updated, 'Federation relationship updated.');
  });

  adminCommand(
    federation
      .command('delete')
      .description(
        "delete a federation relationship; the trust domain's stored bundle stays (see bundle delete)",
      )
      .requiredOption('--trust-domain <trust-domain>', trustDomainHelp),
  ).action(async (flags: FederationFlags) => {
    const trustDomain = trustDomainFlag('--trust-domain', flags.trustDomain);
    const deleted = await withClient(flags, (c) =>
      c.call('FederationService', 'DeleteFederationRelationship', { trust_domain: trustDomain }),
    );
    if (flags.output === 'json') {
      printJson(deleted);
      return;
    }
    print(`Deleted federation relationship with ${deleted.trust_domain}.`);
    if (deleted.bundle !== null)
      print(
        `Its stored bundle (sequence ${deleted.bundle.sequence}) stays, and entries federating with ${deleted.trust_domain} still get it; remove it with "bundle delete --id ${deleted.trust_domain}" once no entry federates with it.`,
      );
  });

  return federation;
}
