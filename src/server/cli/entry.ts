/**
 * `entry create|show|update|delete|count`: registration entries, with SPIRE's flags in kebab-case.
 *
 * @module
 */
import { status } from '@grpc/grpc-js';
import { Command, Option } from 'commander';
import type { EntryFilterMessage, EntryMessage, EntryResult } from '../admin/messages.js';
import { serverSpiffeId } from '../identity.js';
import { parseSelector } from '../registration/validate.js';
import {
  type AdminOptions,
  adminCommand,
  CliError,
  collect,
  integerFlag,
  print,
  printJson,
  withClient,
} from './common.js';
import { blankEntry, readEntryData } from './entry-data.js';

/**
 * Bounds of one BatchCreateEntry call from a --data file (each is one server transaction): at most
 * this many entries, and this many bytes of them as JSON, so the request and the answer (which
 * echoes every entry) stay under gRPC's 4 MiB message limit whatever the entries hold.
 */
const MAX_BATCH = 5000;
const MAX_BATCH_JSON_BYTES = 1024 * 1024;

/** A result of a --data file, with the index of its entry in the file. */
type IndexedResult = EntryResult & { index: number };

/** Placeholder for an entry not answered yet; every one is replaced before printing. */
const UNSENT = { code: status.UNKNOWN, error_code: '', message: 'not sent' };

interface EntryFlags extends AdminOptions {
  entryId?: string;
  spiffeId?: string;
  parentId?: string;
  node?: boolean;
  selector?: string[];
  x509SvidTtl?: number;
  jwtSvidTtl?: number;
  dns?: string[];
  admin?: boolean;
  downstream?: boolean;
  federatesWith?: string[];
  hint?: string;
  entryExpiry?: number;
  data?: string;
  matchSelectorsOn: string;
}

function entryFieldOptions(command: Command): Command {
  return command
    .option('--spiffe-id <id>', 'SPIFFE ID the entry grants')
    .option('--parent-id <id>', 'SPIFFE ID of the agent (or node alias) that may hand it out')
    .option('--node', "make a node alias: the parent is the server's own ID, selectors match agents")
    .option('--selector <type:value>', 'selector, repeatable (e.g. unix:uid:1000)', collect)
    .option(
      '--x509-svid-ttl <seconds>',
      'X.509-SVID lifetime; 0 = server default',
      integerFlag('--x509-svid-ttl'),
    )
    .option(
      '--jwt-svid-ttl <seconds>',
      'JWT-SVID lifetime; 0 = server default',
      integerFlag('--jwt-svid-ttl'),
    )
    .option('--dns <name>', 'DNS SAN for the X.509-SVID, repeatable', collect)
    .option('--admin', 'the SVID may use the admin API')
    .option('--downstream', 'the SVID may act as a downstream CA')
    .option(
      '--federates-with <trust-domain>',
      'trust domain whose bundle the workload also gets, repeatable',
      collect,
    )
    .option('--hint <text>', 'hint for workloads choosing between SVIDs')
    .option(
      '--entry-expiry <unix-seconds>',
      'when the entry stops being valid; 0 = never',
      integerFlag('--entry-expiry'),
    );
}

/** Lays the flags given over `base`; flags not given leave the base value alone. */
function applyFlags(base: EntryMessage, flags: EntryFlags, trustDomain: () => string): EntryMessage {
  const entry = { ...base };
  if (flags.spiffeId !== undefined) entry.spiffe_id = flags.spiffeId;
  if (flags.node) entry.parent_id = serverSpiffeId(trustDomain());
  if (flags.parentId !== undefined) {
    if (flags.node) throw new CliError('ERR_CLI_USAGE', 'give either --node or --parent-id, not both');
    entry.parent_id = flags.parentId;
  }
  if (flags.selector !== undefined) entry.selectors = flags.selector.map(parseSelector);
  if (flags.x509SvidTtl !== undefined) entry.x509_svid_ttl = flags.x509SvidTtl;
  if (flags.jwtSvidTtl !== undefined) entry.jwt_svid_ttl = flags.jwtSvidTtl;
  if (flags.dns !== undefined) entry.dns_names = flags.dns;
  if (flags.admin !== undefined) entry.admin = flags.admin;
  if (flags.downstream !== undefined) entry.downstream = flags.downstream;
  if (flags.federatesWith !== undefined) entry.federates_with = flags.federatesWith;
  if (flags.hint !== undefined) entry.hint = flags.hint;
  if (flags.entryExpiry !== undefined) entry.expires_at = flags.entryExpiry;
  return entry;
}

/** The trust domain, read from the --spiffe-id so --node needs no extra flag. */
function trustDomainOf(flags: EntryFlags): () => string {
  return () => {
    const match = /^spiffe:\/\/([^/]+)\//.exec(flags.spiffeId ?? '');
    if (match?.[1] === undefined)
      throw new CliError('ERR_CLI_USAGE', '--node needs --spiffe-id to know the trust domain');
    return match[1];
  };
}

export function formatEntry(entry: EntryMessage): string {
  const ttl = (value: number) => (value === 0 ? 'default' : String(value));
  const lines = [
    `Entry ID         : ${entry.id}`,
    `SPIFFE ID        : ${entry.spiffe_id}`,
    `Parent ID        : ${entry.parent_id}`,
    `Revision         : ${entry.revision_number}`,
    `X509-SVID TTL    : ${ttl(entry.x509_svid_ttl)}`,
    `JWT-SVID TTL     : ${ttl(entry.jwt_svid_ttl)}`,
    ...entry.selectors.map((s) => `Selector         : ${s.type}:${s.value}`),
    ...entry.dns_names.map((d) => `DNS name         : ${d}`),
    ...entry.federates_with.map((f) => `FederatesWith    : ${f}`),
  ];
  if (entry.admin) lines.push('Admin            : true');
  if (entry.downstream) lines.push('Downstream       : true');
  if (entry.hint !== '') lines.push(`Hint             : ${entry.hint}`);
  if (entry.expires_at !== 0)
    lines.push(`Entry expiry     : ${new Date(entry.expires_at * 1000).toISOString()}`);
  lines.push(`Created at       : ${new Date(entry.created_at * 1000).toISOString()}`);
  return lines.join('\n');
}

/** Prints the results of a create, update or delete of one entry; fails with its error. */
function reportResults(results: EntryResult[], flags: AdminOptions): void {
  if (flags.output === 'json') printJson({ results });
  else
    for (const r of results) if (r.entry !== null && r.status.code === 0) print(`${formatEntry(r.entry)}\n`);
  const failed = results.find((r) => r.status.code !== 0);
  if (failed !== undefined) throw new CliError(failed.status.error_code, failed.status.message);
}

/** Consecutive runs of `items` within MAX_BATCH entries and MAX_BATCH_JSON_BYTES. */
function batches<T extends { entry: EntryMessage }>(items: readonly T[]): T[][] {
  const out: T[][] = [];
  let current: T[] = [];
  let bytes = 0;
  for (const item of items) {
    const size = Buffer.byteLength(JSON.stringify(item.entry));
    if (current.length > 0 && (current.length === MAX_BATCH || bytes + size > MAX_BATCH_JSON_BYTES)) {
      out.push(current);
      current = [];
      bytes = 0;
    }
    current.push(item);
    bytes += size;
  }
  if (current.length > 0) out.push(current);
  return out;
}

/**
 * Sends the entries of a --data file (in batches, see MAX_BATCH) and prints one result per entry
 * of the file, in its order: the entry created, or its index and error. Any failure makes the
 * command fail after all are printed; in text output each is said once, on standard error.
 */
async function createFromData(file: string, flags: AdminOptions): Promise<void> {
  const items = readEntryData(file);
  const results: IndexedResult[] = items.map((item, index) =>
    'status' in item ? { index, status: item.status, entry: null } : { index, status: UNSENT, entry: null },
  );
  const toSend = items.flatMap((item, index) => ('entry' in item ? [{ index, entry: item.entry }] : []));
  if (toSend.length > 0) {
    await withClient(flags, async (client) => {
      for (const batch of batches(toSend)) {
        const answer = await client.call('EntryService', 'BatchCreateEntry', {
          entries: batch.map((b) => b.entry),
        });
        batch.forEach(({ index }, i) => {
          const result = answer.results[i];
          if (result === undefined)
            throw new CliError('ERR_CLI_BAD_ANSWER', 'the server answered fewer results than entries sent');
          results[index] = { index, ...result };
        });
      }
    });
  }
  if (flags.output === 'json') printJson({ results });
  else
    for (const r of results) if (r.entry !== null && r.status.code === 0) print(`${formatEntry(r.entry)}\n`);
  const failed = results.filter((r) => r.status.code !== 0);
  if (failed.length === 0) return;
  throw new CliError(
    'ERR_CLI_ENTRIES_REFUSED',
    `${failed.length} of ${results.length} entries failed:\n  ${failed.map((r) => `entry ${r.index}: ${r.status.error_code}: ${r.status.message}`).join('\n  ')}`,
  );
}

function filterFrom(flags: EntryFlags): EntryFilterMessage {
  const match = flags.matchSelectorsOn;
  return {
    by_spiffe_id: flags.spiffeId ?? '',
    by_parent_id: flags.parentId ?? '',
    by_selectors: (flags.selector ?? []).map(parseSelector),
    selector_match: (flags.selector ?? []).length > 0 ? match : '',
    by_federates_with: flags.federatesWith ?? [],
  };
}

function filterOptions(command: Command): Command {
  return command
    .option('--spiffe-id <id>', 'only entries with this SPIFFE ID')
    .option('--parent-id <id>', 'only entries with this parent ID')
    .option('--selector <type:value>', 'selector to match, repeatable', collect)
    .addOption(
      new Option('--match-selectors-on <how>', "how --selector matches an entry's selectors")
        .choices(['exact', 'subset', 'superset', 'any'])
        .default('superset'),
    )
    .option(
      '--federates-with <trust-domain>',
      'only entries federating with this trust domain, repeatable',
      collect,
    );
}

export function entryCommand(): Command {
  const entry = new Command('entry').description('manage registration entries');

  adminCommand(
    entryFieldOptions(
      entry
        .command('create')
        .description('create a registration entry (or several from --data)')
        .option(
          '--data <file>',
          'JSON file (or - for stdin), {"entries": [...]} as SPIRE\'s -data: entries created in one batch',
        ),
    ),
  ).action(async (flags: EntryFlags) => {
    if (flags.data !== undefined) {
      if (
        flags.spiffeId !== undefined ||
        flags.parentId !== undefined ||
        flags.selector !== undefined ||
        flags.node
      )
        throw new CliError(
          'ERR_CLI_USAGE',
          '--data takes every entry from the file; give no --spiffe-id, --parent-id, --node or --selector with it',
        );
      return createFromData(flags.data, flags);
    }
    const entries = [applyFlags(blankEntry(), flags, trustDomainOf(flags))];
    const { results } = await withClient(flags, (c) =>
      c.call('EntryService', 'BatchCreateEntry', { entries }),
    );
    reportResults(results, flags);
  });

  adminCommand(
    filterOptions(
      entry
        .command('show')
        .description('show entries, filtered')
        .option('--entry-id <id>', 'only this entry'),
    ),
  ).action(async (flags: EntryFlags) => {
    const entries = await withClient(flags, async (client) => {
      if (flags.entryId !== undefined)
        return [await client.call('EntryService', 'GetEntry', { id: flags.entryId })];
      const all: EntryMessage[] = [];
      let token = '';
      do {
        const page = await client.call('EntryService', 'ListEntries', {
          filter: filterFrom(flags),
          page_token: token,
        });
        all.push(...page.entries);
        token = page.next_page_token;
      } while (token !== '');
      return all;
    });
    if (flags.output === 'json') printJson({ entries });
    else {
      print(`Found ${entries.length} ${entries.length === 1 ? 'entry' : 'entries'}`);
      for (const e of entries) print(`${formatEntry(e)}\n`);
    }
  });

  adminCommand(
    entryFieldOptions(
      entry
        .command('update')
        .description('change an entry: flags given replace those fields, the rest stay')
        .requiredOption('--entry-id <id>', 'entry to change'),
    ),
  ).action(async (flags: EntryFlags) => {
    const { results } = await withClient(flags, async (client) => {
      const current = await client.call('EntryService', 'GetEntry', { id: flags.entryId ?? '' });
      const updated = applyFlags(
        current,
        flags,
        trustDomainOf({ ...flags, spiffeId: flags.spiffeId ?? current.spiffe_id }),
      );
      return client.call('EntryService', 'BatchUpdateEntry', { entries: [updated] });
    });
    reportResults(results, flags);
  });

  adminCommand(
    entry
      .command('delete')
      .description('delete an entry')
      .requiredOption('--entry-id <id>', 'entry to delete'),
  ).action(async (flags: EntryFlags) => {
    const { results } = await withClient(flags, (c) =>
      c.call('EntryService', 'BatchDeleteEntry', { ids: [flags.entryId ?? ''] }),
    );
    const [result] = results;
    if (flags.output === 'json') printJson({ results });
    if (result === undefined || result.status.code !== 0) {
      throw new CliError(
        result?.status.error_code ?? 'ERR_CLI_BAD_ANSWER',
        result?.status.message ?? 'the server returned no result',
      );
    }
    if (flags.output === 'text') print(`Deleted entry ${result.id}`);
  });

  adminCommand(filterOptions(entry.command('count').description('count entries, filtered'))).action(
    async (flags: EntryFlags) => {
      const { count } = await withClient(flags, (c) =>
        c.call('EntryService', 'CountEntries', { filter: filterFrom(flags) }),
      );
      if (flags.output === 'json') printJson({ count });
      else print(`${count} registration ${count === 1 ? 'entry' : 'entries'}`);
    },
  );

  return entry;
}
