import { pino } from 'pino';
import { describe, expect, it } from 'vitest';
import { AgentError } from '../../src/agent/errors.js';
import { failsOver, type LookupAll, ServerList } from '../../src/agent/servers.js';
import { LogSink } from '../attestation/harness.js';

const unreachable = new AgentError('ERR_AGENT_SERVER_UNAVAILABLE', 'the server is unreachable');
const silent = pino({ level: 'silent' });

/** A resolver that knows the names given and fails like getaddrinfo for any other. */
function resolver(names: Record<string, string[]>): LookupAll & { asked: string[] } {
  const asked: string[] = [];
  const lookup = async (host: string) => {
    asked.push(host);
    const ips = names[host];
    if (ips === undefined)
      throw Object.assign(new Error(`getaddrinfo ENOTFOUND ${host}`), { code: 'ENOTFOUND' });
    return ips.map((address) => ({ address, family: address.includes(':') ? 6 : 4 }));
  };
  return Object.assign(lookup, { asked });
}

describe('ServerList', () => {
  it('resolves a host name with the host resolver (localhost) and dials an IP literal as it is', async () => {
    const list = new ServerList(['localhost:8081', '[::1]:8082', '10.0.0.7:8083'], silent);
    const first = await list.current();
    expect(first).toEqual({ address: '127.0.0.1:8081', configured: 'localhost:8081' });
    list.failed(first, unreachable);
    expect(await list.current()).toEqual({ address: '[::1]:8082', configured: '[::1]:8082' });
  });

  it('counts a name with two addresses as two servers, in the resolver’s order', async () => {
    const lookup = resolver({ 'servers.test': ['::1', '127.0.0.1'] });
    const list = new ServerList(['servers.test:8081'], silent, lookup);
    expect(await list.current()).toEqual({ address: '[::1]:8081', configured: 'servers.test:8081' });
    expect(list.size).toBe(2);
    expect(list.failed(await list.current(), unreachable)).toBe('moved');
    expect(await list.current()).toEqual({ address: '127.0.0.1:8081', configured: 'servers.test:8081' });
    expect(lookup.asked).toEqual(['servers.test']);
  });

  it('moves along the list at once, and says exhausted only when every server failed in a row', async () => {
    const list = new ServerList(['10.0.0.1:1', '10.0.0.2:1', '10.0.0.3:1'], silent);
    const a = await list.current();
    expect(list.failed(a, unreachable)).toBe('moved');
    const b = await list.current();
    expect(b.address).toBe('10.0.0.2:1');
    expect(list.failed(b, unreachable)).toBe('moved');
    const c = await list.current();
    expect(list.failed(c, unreachable)).toBe('exhausted');
    // The next pass starts where this one did.
    expect((await list.current()).address).toBe('10.0.0.1:1');
  });

  it('a list of one is exhausted by each failure, as a single server always was', async () => {
    const list = new ServerList(['10.0.0.1:1'], silent);
    expect(list.failed(await list.current(), unreachable)).toBe('exhausted');
    expect(list.failed(await list.current(), unreachable)).toBe('exhausted');
  });

  it('a server that answers ends the run of failures: the next failure starts a new pass', async () => {
    const list = new ServerList(['10.0.0.1:1', '10.0.0.2:1'], silent);
    expect(list.failed(await list.current(), unreachable)).toBe('moved');
    list.reached(await list.current());
    // b fails after answering: a is tried again before any backoff.
    expect(list.failed(await list.current(), unreachable)).toBe('moved');
    expect((await list.current()).address).toBe('10.0.0.1:1');
  });

  it('a failure on a server the list already left does not move it again', async () => {
    const list = new ServerList(['10.0.0.1:1', '10.0.0.2:1', '10.0.0.3:1'], silent);
    const a = await list.current();
    expect(list.failed(a, unreachable)).toBe('moved');
    // Another call that was on a fails after the first one moved on: it is retried on b.
    expect(list.failed(a, unreachable)).toBe('moved');
    expect((await list.current()).address).toBe('10.0.0.2:1');
  });

  it('logs the server in use when calls first get through, and when it changes, with the reason', async () => {
    const logs = new LogSink();
    const list = new ServerList(
      ['a.test:8081', '10.0.0.2:8081'],
      pino(logs.stream),
      resolver({ 'a.test': ['10.0.0.1'] }),
    );
    const a = await list.current();
    list.reached(a);
    list.reached(a);
    list.failed(a, unreachable);
    const b = await list.current();
    list.reached(b);
    expect(
      logs.lines
        .filter((l) => l.level === 30 || l.level === 40)
        .map((l) => ({ ...l, time: 0, pid: 0, hostname: '' })),
    ).toEqual([
      {
        level: 30,
        time: 0,
        pid: 0,
        hostname: '',
        server_address: '10.0.0.1:8081',
        server_name: 'a.test:8081',
        msg: 'talking to the server',
      },
      {
        level: 40,
        time: 0,
        pid: 0,
        hostname: '',
        server_address: '10.0.0.2:8081',
        previous_server_address: '10.0.0.1:8081',
        reason: 'ERR_AGENT_SERVER_UNAVAILABLE',
        msg: 'the server in use changed: the previous one could not be reached',
      },
    ]);
    expect(list.inUse).toBe('10.0.0.2:8081');
  });

  it('skips a name that does not resolve; with none resolving, fails as unreachable naming them', async () => {
    const list = new ServerList(['gone.test:1', '10.0.0.2:1'], silent, resolver({}));
    expect((await list.current()).address).toBe('10.0.0.2:1');
    const none = new ServerList(['gone.test:1', 'away.test:2'], silent, resolver({}));
    await expect(none.current()).rejects.toMatchObject({
      code: 'ERR_AGENT_SERVER_UNAVAILABLE',
      message:
        "no server address resolves (gone.test: ENOTFOUND; away.test: ENOTFOUND); check server_address or server_addresses and this host's DNS",
    });
  });

  it('resolves names again after a failed pass, keeping the addresses it had while none resolves', async () => {
    const names: Record<string, string[]> = { 'servers.test': ['10.0.0.1'] };
    const lookup = resolver(names);
    const list = new ServerList(['servers.test:1'], silent, lookup);
    expect(list.failed(await list.current(), unreachable)).toBe('exhausted');
    names['servers.test'] = ['10.0.0.1', '10.0.0.9'];
    await list.current();
    expect(list.size).toBe(2);
    expect(lookup.asked).toHaveLength(2);
    expect(list.failed(await list.current(), unreachable)).toBe('moved');
    expect(list.failed(await list.current(), unreachable)).toBe('exhausted');
    delete names['servers.test'];
    expect((await list.current()).address).toBe('10.0.0.1:1');
    expect(list.size).toBe(2);
  });

  it('fails over for an unreachable or untrusted server, not for a refusal or a bundle URL problem', () => {
    expect(failsOver(unreachable)).toBe(true);
    expect(failsOver(new AgentError('ERR_AGENT_SERVER_ID_MISMATCH', 'another server'))).toBe(true);
    expect(failsOver(new AgentError('ERR_AGENT_TRUST_BUNDLE_STALE', 'stale'))).toBe(true);
    expect(failsOver(new AgentError('ERR_ATTEST_JOIN_TOKEN_INVALID', 'refused'))).toBe(false);
    expect(failsOver(new AgentError('ERR_AGENT_NOT_ATTESTED', 'refused'))).toBe(false);
    expect(failsOver(new AgentError('ERR_AGENT_TRUST_BUNDLE_URL', 'cannot fetch'))).toBe(false);
    expect(failsOver(new Error('bug'))).toBe(false);
  });
});
