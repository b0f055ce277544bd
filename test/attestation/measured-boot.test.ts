import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ServerConfigInput } from '../../src/server/config/schema.js';
import { profileYaml } from '../../src/server/profiles/load.js';
import { learnProfile, parseEventLog, selfBootFacts } from '../../src/tpm/index.js';
import { repoRoot } from '../helpers/dist.js';
import { editEvent, grubMeasured, replaceInData } from '../helpers/eventlog-edit.js';
import { fixturePath } from '../helpers/fixtures.js';
import { replayIntoTpm } from '../helpers/replay-into-tpm.js';
import { type Swtpm, startSwtpm } from '../helpers/swtpm.js';
import { healthy, startAttestServer, startTestAgent, type TestServer, until } from './harness.js';

/**
 * A real OVMF boot with Secure Boot on (keylime's RHEL 9 VM log, SHA-256 only, no StartupLocality)
 * is replayed into each swtpm, so the TPM's PCRs are that machine's; the agent sends the real log.
 * Changed boots are the same log with one event changed *and remeasured*, as firmware or grub would
 * have measured it, replayed the same way: the PCRs and the log agree, only the profile can refuse.
 */
const golden = readFileSync(fixturePath('eventlogs', 'keylime', 'binary_bios_measurements-secureboot'));
const SB_EVENT = 4;
const GRUB_LINUX_EVENT = 91;
const CMDLINE_EVENT = 94;

function secureBootOff(log: Buffer): Buffer {
  const event = parseEventLog(log).events[SB_EVENT];
  if (event === undefined) throw new Error('no SecureBoot event');
  const data = Buffer.from(event.data);
  data[data.length - 1] = 0;
  return editEvent(log, SB_EVENT, { data, remeasure: true });
}

function cmdlineChanged(log: Buffer): Buffer {
  let out = log;
  for (const index of [GRUB_LINUX_EVENT, CMDLINE_EVENT])
    out = editEvent(out, index, {
      data: replaceInData(out, index, 'rhgb quiet', 'init=/evil'),
      remeasure: true,
      measured: grubMeasured,
    });
  return out;
}

const profilesDir = mkdtempSync(join(tmpdir(), 'ironroot-profiles-'));
writeFileSync(
  join(profilesDir, 'ovmf-rhel9.yaml'),
  profileYaml(learnProfile(selfBootFacts(parseEventLog(golden)), { name: 'ovmf-rhel9' }), 'golden boot'),
);
writeFileSync(
  join(profilesDir, 'other-platform.yaml'),
  profileYaml(
    learnProfile(
      selfBootFacts(parseEventLog(readFileSync(fixturePath('eventlogs', 'keylime', 'mb_log.bin')))),
      {
        name: 'other-platform',
      },
    ),
    'another machine',
  ),
);

interface Node {
  swtpm: Swtpm;
  logFile: string;
}

const nodes: Node[] = [];

async function node(log: Buffer): Promise<Node> {
  const swtpm = await startSwtpm();
  await replayIntoTpm(swtpm, log);
  const logFile = join(mkdtempSync(join(tmpdir(), 'ironroot-log-')), 'binary_bios_measurements');
  writeFileSync(logFile, log);
  const made = { swtpm, logFile };
  nodes.push(made);
  return made;
}

async function server(measuredBoot: NonNullable<ServerConfigInput['tpm_attestation']>['measured_boot']) {
  return startAttestServer({ tpm_attestation: { ek_trust: 'any', measured_boot: measuredBoot } });
}

async function selectorsAfterAttesting(s: TestServer, n: Node): Promise<string[]> {
  const agent = await startTestAgent(s, { tcti: n.swtpm.tcti, event_log_path: n.logFile });
  try {
    const status = await until('the agent to attest', () => healthy(agent));
    return ((await s.server.datastore.getNode(status.spiffe_id))?.selectors ?? []).map(
      (x) => `${x.type}:${x.value}`,
    );
  } finally {
    await agent.stop();
  }
}

async function refusal(s: TestServer, n: Node): Promise<Record<string, unknown>> {
  const agent = await startTestAgent(s, { tcti: n.swtpm.tcti, event_log_path: n.logFile });
  try {
    return await until('the server to refuse the agent', () =>
      s.logs.decisions().find((d) => d.result === 'refused'),
    );
  } finally {
    await agent.stop();
  }
}

let goldenNode: Node;
let profiled: TestServer;

beforeAll(async () => {
  goldenNode = await node(golden);
  profiled = await server({ profiles_dir: profilesDir, profiles: ['ovmf-rhel9'] });
});

afterAll(async () => {
  await profiled?.stop();
  await Promise.all(nodes.map((n) => n.swtpm.stop()));
});

describe('measured boot in the trust decision (real OVMF boot replayed into swtpm)', () => {
  it('a node whose boot fits its profile gets tpm:profile and tpm:secureboot:enabled', async () => {
    const selectors = await selectorsAfterAttesting(profiled, goldenNode);
    expect(selectors).toContain('tpm:profile:ovmf-rhel9');
    expect(selectors).toContain('tpm:secureboot:enabled');
  });

  it('the same boot with a changed kernel command line is refused, naming the command line rule', async () => {
    const s = await server({ profiles_dir: profilesDir, profiles: ['ovmf-rhel9'] });
    try {
      const decision = await refusal(s, await node(cmdlineChanged(golden)));
      expect(decision.reason).toBe('ERR_ATTEST_PROFILE_VIOLATION');
      expect(String(decision.detail)).toMatch(
        /boot\.kernel_cmdline \(PCR 8 event 94\): expected .*rhgb quiet.*, got .*init=\/evil/,
      );
      expect(await s.server.datastore.listNodes()).toEqual([]);
      const metrics = await s.server.health.inject({ method: 'GET', url: '/metrics' });
      // The agent retries a refused attestation after its backoff, so a slow run may count more than one.
      const counted = metrics.body.match(
        /ironroot_node_attestations_total\{method="tpm",result="ERR_ATTEST_PROFILE_VIOLATION"\} (\d+)/,
      );
      expect(Number(counted?.[1])).toBeGreaterThanOrEqual(1);
    } finally {
      await s.stop();
    }
  });

  it('Secure Boot off is refused, naming Secure Boot', async () => {
    const s = await server({ profiles_dir: profilesDir, profiles: ['ovmf-rhel9'] });
    try {
      const decision = await refusal(s, await node(secureBootOff(golden)));
      expect(decision.reason).toBe('ERR_ATTEST_PROFILE_VIOLATION');
      expect(String(decision.detail)).toContain(
        'secure_boot.enabled (PCR 7): expected enabled, got disabled',
      );
    } finally {
      await s.stop();
    }
  });

  it('a profile assigned by EK hash decides over the default, and a boot that fits none is refused', async () => {
    const n = await node(golden);
    const plain = await server('none');
    const ekHash = (await selectorsAfterAttesting(plain, n))
      .find((x) => x.startsWith('tpm:ek-hash:'))
      ?.slice(12);
    await plain.stop();
    const s = await server({
      profiles_dir: profilesDir,
      profiles: ['ovmf-rhel9'],
      rules: [{ ek_hash: ekHash ?? '', profiles: ['other-platform'] }],
    });
    try {
      const decision = await refusal(s, n);
      expect(decision.reason).toBe('ERR_ATTEST_PROFILE_VIOLATION');
      expect(String(decision.detail)).toContain('profile other-platform:');
    } finally {
      await s.stop();
    }
  });

  it('a known node whose boot no longer fits is untrusted, with every violated rule on its record', async () => {
    const n = await node(golden);
    const s = await server({ profiles_dir: profilesDir, profiles: ['ovmf-rhel9'] });
    try {
      const id = (await selectorsAfterAttesting(s, n)).find((x) => x.startsWith('tpm:ek-hash:'))?.slice(12);
      const agentId = `spiffe://example.org/agent/tpm/${id}`;
      expect((await s.server.datastore.getNode(agentId))?.trust.state).toBe('trusted');
      await s.restart({
        tpm_attestation: {
          ek_trust: 'any',
          measured_boot: { profiles_dir: profilesDir, profiles: ['other-platform'] },
        },
      });
      s.logs.lines.length = 0;
      expect((await refusal(s, n)).reason).toBe('ERR_ATTEST_PROFILE_VIOLATION');
      const trust = (await s.server.datastore.getNode(agentId))?.trust;
      expect(trust).toMatchObject({ state: 'untrusted', code: 'ERR_ATTEST_PROFILE_VIOLATION' });
      const details = JSON.parse(trust?.details ?? '{}') as Record<string, { rule: string }[]>;
      expect(Object.keys(details)).toEqual(['other-platform']);
      expect(details['other-platform']?.map((v) => v.rule)).toContain('firmware.blobs');
    } finally {
      await s.stop();
    }
  });

  it('measured_boot: none still reads Secure Boot from bound data, and gives no profile selector', async () => {
    const s = await server('none');
    try {
      const selectors = await selectorsAfterAttesting(s, goldenNode);
      expect(selectors).toContain('tpm:secureboot:enabled');
      expect(selectors.some((x) => x.startsWith('tpm:profile:'))).toBe(false);
    } finally {
      await s.stop();
    }
  });

  it('a forged Secure Boot byte on a Secure-Boot-off boot does not give tpm:secureboot:enabled', async () => {
    // Firmware measured Secure Boot off; the log is then edited to say on, digest untouched.
    const off = secureBootOff(golden);
    const n = await node(off);
    const event = parseEventLog(off).events[SB_EVENT];
    if (event === undefined) throw new Error('no SecureBoot event');
    const forged = Buffer.from(event.data);
    forged[forged.length - 1] = 1;
    writeFileSync(n.logFile, editEvent(off, SB_EVENT, { data: forged }));
    const s = await server('none');
    try {
      const selectors = await selectorsAfterAttesting(s, n);
      expect(selectors.filter((x) => x.startsWith('tpm:secureboot:'))).toEqual([]);
    } finally {
      await s.stop();
    }
  });
});

describe('the shipped ovmf-debian-secureboot profile against real Debian boots under OVMF', () => {
  const ovmf = (name: string) => readFileSync(fixturePath('eventlogs', 'ovmf', `${name}.bin`));
  const shipped = join(repoRoot, 'firmware-profiles');
  let s: TestServer;

  beforeAll(async () => {
    s = await server({ profiles_dir: shipped, profiles: ['ovmf-debian-secureboot'] });
  });

  afterAll(() => s?.stop());

  it('the Secure Boot boot attests with tpm:profile:ovmf-debian-secureboot and tpm:secureboot:enabled', async () => {
    const selectors = await selectorsAfterAttesting(s, await node(ovmf('debian-secureboot')));
    expect(selectors).toContain('tpm:profile:ovmf-debian-secureboot');
    expect(selectors).toContain('tpm:secureboot:enabled');
  });

  it('the boot with another kernel command line is refused, naming boot.kernel_cmdline', async () => {
    const decision = await refusal(s, await node(ovmf('debian-secureboot-cmdline')));
    expect(decision.reason).toBe('ERR_ATTEST_PROFILE_VIOLATION');
    expect(String(decision.detail)).toMatch(
      /boot\.kernel_cmdline \(PCR 8 event \d+\): expected "\/vmlinuz console=ttyS0 quiet ironroot=golden", got "\/vmlinuz console=ttyS0 quiet ironroot=other"/,
    );
  });

  it('the boot with Secure Boot off is refused, naming secure_boot.enabled', async () => {
    s.logs.lines.length = 0;
    const decision = await refusal(s, await node(ovmf('debian-secureboot-off')));
    expect(decision.reason).toBe('ERR_ATTEST_PROFILE_VIOLATION');
    expect(String(decision.detail)).toContain('secure_boot.enabled (PCR 7): expected enabled, got disabled');
  });
});
