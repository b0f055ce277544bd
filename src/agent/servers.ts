/**
 * The servers the agent may talk to (servers sharing one datastore), in the configured order:
 * `server_address`, or each of `server_addresses`, a host name standing for every address the
 * host's resolver gives for it (A and AAAA, /etc/hosts included, as for any program on the host).
 * Every call goes to the current server. A call that cannot reach it ({@link failsOver}) moves
 * the agent to the next one, and is made again there at once; only when every server has failed
 * in a row (a pass over the list) does the caller back off (outage.ts), so the backoff counts
 * passes, not addresses, and a list of one behaves as a single server always did. The agent stays
 * with a server while it answers; names are resolved again after each failed pass.
 *
 * The host name only finds the addresses: the server is authenticated by its SPIFFE ID, whichever
 * address answers (client.ts).
 *
 * @module
 */
import { lookup } from 'node:dns/promises';
import { isIP } from 'node:net';
import type { Logger } from 'pino';
import { AgentError, SERVER_TRUST_CODES } from './errors.js';

/** One server to dial. */
export interface ServerTarget {
  /** `ip:port` (`[ip6]:port`) to dial. */
  readonly address: string;
  /** The configured `host:port` it came from: the same as `address` when that names an IP. */
  readonly configured: string;
}

/** Every address of a host name, in the resolver's order. */
export type LookupAll = (host: string) => Promise<readonly { address: string; family: number }[]>;

const systemLookup: LookupAll = (host) => lookup(host, { all: true, verbatim: true });

/**
 * Whether a failed call moves to the next server: the server could not be reached (refused, timed
 * out, the connection dropped), or its TLS certificate was refused (another server listens there,
 * or this one is misconfigured). A refusal the server answered with (a refused attestation,
 * PERMISSION_DENIED) does not: the servers share their datastore, so another would say the same.
 */
export function failsOver(error: unknown): boolean {
  if (!(error instanceof AgentError)) return false;
  // The bundle URL failing says nothing of any server.
  if (error.code === 'ERR_AGENT_TRUST_BUNDLE_URL') return false;
  return error.code === 'ERR_AGENT_SERVER_UNAVAILABLE' || SERVER_TRUST_CODES.has(error.code);
}

/** `host` and `port` of a validated `host:port` (brackets of an IPv6 literal taken off). */
function splitHostPort(text: string): { host: string; port: string } {
  const colon = text.lastIndexOf(':');
  return { host: text.slice(0, colon).replace(/^\[(.*)\]$/, '$1'), port: text.slice(colon + 1) };
}

function dialAddress(ip: string, port: string): string {
  return isIP(ip) === 6 ? `[${ip}]:${port}` : `${ip}:${port}`;
}

export class ServerList {
  readonly #configured: readonly string[];
  readonly #lookup: LookupAll;
  readonly #logger: Logger;
  #targets: readonly ServerTarget[] = [];
  #index = 0;
  /** Resolve the names before the next call (at start, and after a failed pass). */
  #stale = true;
  #resolving: Promise<void> | undefined;
  /** Where the current run of failures started; undefined while the current server answers. */
  #streakStart: number | undefined;
  /** The code that made the agent leave a server, for the line that names the next one in use. */
  #leftFor: string | undefined;
  #inUse: ServerTarget | undefined;

  readonly #changed: (reason: string) => void;

  /** `changed` hears of every move to another server in use, with the code that made it leave. */
  constructor(
    configured: readonly string[],
    logger: Logger,
    resolve: LookupAll = systemLookup,
    changed: (reason: string) => void = () => {},
  ) {
    this.#configured = configured;
    this.#logger = logger;
    this.#lookup = resolve;
    this.#changed = changed;
  }

  /** Servers in the list (after resolution); at least one. */
  get size(): number {
    return Math.max(this.#targets.length, 1);
  }

  /** The address the last successful call went to; undefined before the first. */
  get inUse(): string | undefined {
    return this.#inUse?.address;
  }

  /** The server to call now; throws ERR_AGENT_SERVER_UNAVAILABLE when no name resolves. */
  async current(): Promise<ServerTarget> {
    if (this.#stale) {
      this.#resolving ??= this.#resolve().finally(() => {
        this.#resolving = undefined;
      });
      await this.#resolving;
    }
    const target = this.#targets[this.#index];
    if (target === undefined) throw new AgentError('ERR_AGENT_STATE', 'no server to call');
    return target;
  }

  /**
   * Records that `target` could not be reached (`error`, one that {@link failsOver}): 'moved' when
   * the next server is one not tried yet in this pass (or another call moved on already), to be
   * called at once; 'exhausted' when every server failed in a row, for the backoff.
   */
  failed(target: ServerTarget, error: AgentError): 'moved' | 'exhausted' {
    const at = this.#targets.findIndex((t) => t.address === target.address);
    if (at !== this.#index) return 'moved';
    this.#streakStart ??= at;
    this.#index = (at + 1) % this.#targets.length;
    this.#leftFor = error.code;
    // A single server has no next one to name.
    if (this.#targets.length > 1)
      this.#logger.debug(
        {
          server_address: target.address,
          reason: error.code,
          next_server_address: this.#targets[this.#index]?.address,
        },
        'cannot reach this server; moving to the next',
      );
    if (this.#index !== this.#streakStart) return 'moved';
    this.#streakStart = undefined;
    this.#stale = true;
    return 'exhausted';
  }

  /**
   * Records that `target` answered (a result, or a refusal of its own): the run of failures ends,
   * and a new server in use is logged.
   */
  reached(target: ServerTarget): void {
    if (this.#targets[this.#index]?.address !== target.address) return;
    this.#streakStart = undefined;
    const previous = this.#inUse;
    if (previous?.address === target.address) return;
    this.#inUse = target;
    const fields = {
      server_address: target.address,
      ...(target.configured !== target.address ? { server_name: target.configured } : {}),
    };
    if (previous === undefined) {
      this.#logger.info(fields, 'talking to the server');
      return;
    }
    const reason = this.#leftFor ?? 'unknown';
    this.#logger.warn(
      { ...fields, previous_server_address: previous.address, reason },
      'the server in use changed: the previous one could not be reached',
    );
    this.#changed(reason);
  }

  async #resolve(): Promise<void> {
    const targets: ServerTarget[] = [];
    const problems: string[] = [];
    for (const configured of this.#configured) {
      const { host, port } = splitHostPort(configured);
      let ips: string[];
      if (isIP(host) !== 0) ips = [host];
      else {
        try {
          ips = (await this.#lookup(host)).map((found) => found.address);
        } catch (error) {
          problems.push(`${host}: ${(error as { code?: string }).code ?? (error as Error).message}`);
          continue;
        }
      }
      for (const ip of ips) {
        const address = dialAddress(ip, port);
        if (!targets.some((t) => t.address === address)) targets.push({ address, configured });
      }
    }
    if (targets.length === 0 && this.#targets.length > 0) {
      // The resolver failing for a while does not make the servers known so far unusable.
      this.#logger.debug(
        { problems },
        'no server address resolves now; keeping the addresses resolved before',
      );
      this.#stale = false;
      return;
    }
    if (targets.length === 0)
      throw new AgentError(
        'ERR_AGENT_SERVER_UNAVAILABLE',
        `no server address resolves (${problems.join('; ')}); check server_address or server_addresses and this host's DNS`,
      );
    const current = this.#targets[this.#index]?.address;
    const keep = targets.findIndex((t) => t.address === current);
    this.#targets = targets;
    this.#index = keep === -1 ? 0 : keep;
    this.#stale = false;
  }
}
