import { Command, InvalidArgumentError } from 'commander';
import type { AgentMessage } from '../admin/messages.js';
import { DURATION_HINT, parseDuration } from '../config/duration.js';
import { type AdminOptions, adminCommand, print, printJson, withClient } from './common.js';

interface AgentFlags extends AdminOptions {
  spiffeId?: string;
  ekHash?: string;
  banned?: boolean;
}

const iso = (unixSeconds: number) => new Date(unixSeconds * 1000).toISOString();

/** The server answers a re-quote within its reattest_deadline; this only bounds a server that hangs. */
const REATTEST_CALL_DEADLINE_MS = 15 * 60_000;

/**
 * TPM lines appear only when the server recorded them: join-token agents have none. A banned ID
 * without a node record (banned before attesting, or evicted while banned) has only its ban.
 */
function formatAgent(agent: AgentMessage): string {
  const banned = [
    `Banned            : ${agent.banned}`,
    ...(agent.banned && agent.banned_at > 0 ? [`Banned since      : ${iso(agent.banned_at)}`] : []),
  ];
  if (agent.attestation_type === '')
    return [
      `SPIFFE ID         : ${agent.spiffe_id}`,
      'Attestation type  : none (not attested)',
      ...banned,
      ...(agent.ek_hash !== '' ? [`EK hash           : ${agent.ek_hash}`] : []),
    ].join('\n');
  const quote = agent.last_quote;
  return [
    `SPIFFE ID         : ${agent.spiffe_id}`,
    `Attestation type  : ${agent.attestation_type}`,
    `Expiration time   : ${iso(agent.x509_svid_expires_at)}`,
    `Serial number     : ${agent.x509_svid_serial_number}`,
    ...banned,
    `Attestations      : ${agent.attestation_count}`,
    ...(agent.trust !== null
      ? [
          `Trust             : ${agent.trust.state} since ${iso(agent.trust.changed_at)}${agent.trust.state === 'untrusted' ? ` (${agent.trust.code}: ${agent.trust.reason})` : ''}`,
        ]
      : []),
    ...(agent.ek_hash !== '' ? [`EK hash           : ${agent.ek_hash}`] : []),
    ...(agent.ek_issuer !== '' ? [`EK issuer         : ${agent.ek_issuer}`] : []),
    ...(agent.ak_public_sha256 !== ''
      ? [`AK                : ${agent.ak_algorithm}, public area SHA-256 ${agent.ak_public_sha256}`]
      : []),
    ...(quote !== null
      ? [
          `Last quote        : ${iso(quote.quoted_at)}, reset count ${quote.reset_count}, restart count ${quote.restart_count}, firmware ${quote.firmware_version}`,
          ...quote.pcrs.map((p) => `PCR ${`${p.bank}:${p.index}`.padEnd(14)}: ${p.value}`),
        ]
      : []),
    ...agent.selectors.map((s) => `Selector          : ${s.type}:${s.value}`),
    ...agent.alias_spiffe_ids.map((id) => `Alias             : ${id}`),
  ].join('\n');
}

function single(
  name: string,
  description: string,
  method: 'GetAgent' | 'EvictAgent' | 'UnbanAgent',
  done: string,
) {
  return adminCommand(
    new Command(name).description(description).requiredOption('--spiffe-id <id>', "the agent's SPIFFE ID"),
  ).action(async (flags: AgentFlags) => {
    const agent = await withClient(flags, (c) =>
      c.call('AgentService', method, { spiffe_id: flags.spiffeId ?? '' }),
    );
    if (flags.output === 'json') printJson(agent);
    else print(done === '' ? formatAgent(agent) : `${done} ${agent.spiffe_id}`);
  });
}

/** SPIRE's `agent purge -expiredFor` default: a month past the agent SVID's expiry. */
const PURGE_EXPIRED_FOR_DEFAULT = '30d';

function durationFlag(flag: string): (text: string) => number {
  return (text: string) => {
    const seconds = parseDuration(text);
    if (seconds === undefined)
      throw new InvalidArgumentError(`${flag} ${JSON.stringify(text)}: allowed: ${DURATION_HINT}`);
    return seconds;
  };
}

/** Attested agents: a ban without a node record is not an agent to count or purge. */
const attested = (agents: AgentMessage[]) => agents.filter((a) => a.attestation_type !== '');

/** `agent list|show|count|purge|evict|ban|unban|reattest`: attested agents. */
export function agentCommand(): Command {
  const agent = new Command('agent').description('manage attested agents');
  agent.addCommand(
    adminCommand(
      new Command('list')
        .description('list attested agents, and banned agent IDs that are not attested')
        .option('--banned', 'only banned agents'),
    ).action(async (flags: AgentFlags) => {
      const { agents } = await withClient(flags, (c) =>
        c.call('AgentService', 'ListAgents', { by_banned: flags.banned ? 'true' : '' }),
      );
      if (flags.output === 'json') printJson({ agents });
      else {
        print(`Found ${agents.length} ${agents.length === 1 ? 'agent' : 'agents'}`);
        for (const a of agents) print(`${formatAgent(a)}\n`);
      }
    }),
  );
  agent.addCommand(
    single('show', 'show everything stored for one agent, with its node aliases', 'GetAgent', ''),
  );
  agent.addCommand(
    adminCommand(new Command('count').description('count attested agents')).action(
      async (flags: AgentFlags) => {
        const { agents } = await withClient(flags, (c) =>
          c.call('AgentService', 'ListAgents', { by_banned: '' }),
        );
        const count = attested(agents).length;
        if (flags.output === 'json') printJson({ count });
        else print(`${count} attested ${count === 1 ? 'agent' : 'agents'}`);
      },
    ),
  );
  agent.addCommand(
    adminCommand(
      new Command('purge')
        .description(
          'evict agents whose agent SVID expired longer ago than --expired-for (their bans stay); each eviction is audited',
        )
        .option(
          '--expired-for <duration>',
          `how long past expiry, ${DURATION_HINT}`,
          durationFlag('--expired-for'),
          parseDuration(PURGE_EXPIRED_FOR_DEFAULT),
        )
        .option('--dry-run', 'only list the agents that would be evicted'),
    ).action(async (flags: AgentFlags & { expiredFor: number; dryRun?: boolean }) => {
      const cutoff = Math.floor(Date.now() / 1000) - flags.expiredFor;
      const purged = await withClient(flags, async (c) => {
        const { agents } = await c.call('AgentService', 'ListAgents', { by_banned: '' });
        const expired = attested(agents).filter((a) => a.x509_svid_expires_at < cutoff);
        for (const a of expired)
          if (!flags.dryRun) await c.call('AgentService', 'EvictAgent', { spiffe_id: a.spiffe_id });
        return expired;
      });
      if (flags.output === 'json')
        printJson({
          dry_run: flags.dryRun === true,
          agents: purged.map((a) => ({
            spiffe_id: a.spiffe_id,
            x509_svid_expires_at: a.x509_svid_expires_at,
          })),
        });
      else {
        const verb = flags.dryRun ? 'Would evict' : 'Evicted';
        print(`${verb} ${purged.length} expired ${purged.length === 1 ? 'agent' : 'agents'}`);
        for (const a of purged) print(`${a.spiffe_id} (agent SVID expired ${iso(a.x509_svid_expires_at)})`);
      }
    }),
  );
  agent.addCommand(
    single(
      'evict',
      'forget an agent; it must attest again (a ban on it stays)',
      'EvictAgent',
      'Evicted agent',
    ),
  );
  agent.addCommand(
    adminCommand(
      new Command('ban')
        .description(
          'ban an agent, attested or not yet: its attestation, renewal and agent API calls are refused until unbanned; eviction does not lift it',
        )
        .option('--spiffe-id <id>', "the agent's SPIFFE ID")
        .option(
          '--ek-hash <hex>',
          "a TPM's EK hash (SHA-256 of its EK public key, 64 hex digits): bans spiffe://<td>/agent/tpm/<hash>, also before its first attestation",
        ),
    ).action(async (flags: AgentFlags) => {
      const banned = await withClient(flags, (c) =>
        c.call('AgentService', 'BanAgent', { spiffe_id: flags.spiffeId ?? '', ek_hash: flags.ekHash ?? '' }),
      );
      if (flags.output === 'json') printJson(banned);
      else print(`Banned agent ${banned.spiffe_id}`);
    }),
  );
  agent.addCommand(single('unban', 'lift a ban: the agent may attest again', 'UnbanAgent', 'Unbanned agent'));
  agent.addCommand(
    adminCommand(
      new Command('reattest')
        .description(
          'ask a TPM node for a fresh quote now and print the outcome; exits 1 when the node is untrusted',
        )
        .requiredOption('--spiffe-id <id>', "the agent's SPIFFE ID"),
    ).action(async (flags: AgentFlags) => {
      const id = flags.spiffeId ?? '';
      const result = await withClient(flags, (c) =>
        c.call('AgentService', 'ReattestAgent', { spiffe_id: id }, { deadlineMs: REATTEST_CALL_DEADLINE_MS }),
      );
      if (flags.output === 'json') printJson(result);
      else if (result.trusted)
        print(`Agent ${id} is trusted: the re-quote passed in ${result.duration_ms} ms`);
      else print(`Agent ${id} is untrusted: ${result.code}: ${result.reason}`);
      if (!result.trusted) process.exitCode = 1;
    }),
  );
  return agent;
}
