import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  healthy,
  startAttestServer,
  startTestAgent,
  type TestServer,
  until,
} from '../attestation/harness.js';
import { runServerCli } from '../helpers/cli.js';
import { editEvent, grubMeasured, replaceInData } from '../helpers/eventlog-edit.js';
import { fixturePath } from '../helpers/fixtures.js';
import { replayIntoTpm } from '../helpers/replay-into-tpm.js';
import { startSwtpm } from '../helpers/swtpm.js';

const goldenLog = fixturePath('eventlogs', 'keylime', 'binary_bios_measurements-secureboot');
const dir = mkdtempSync(join(tmpdir(), 'ironroot-profile-cli-'));
const profileFile = join(dir, 'golden.yaml');
const changedLog = join(dir, 'changed.bin');
const cli = (args: string[]) => runServerCli(args, process.env);

beforeAll(() => {
  const golden = readFileSync(goldenLog);
  const changed = editEvent(golden, 94, {
    data: replaceInData(golden, 94, 'rhgb quiet', 'init=/evil'),
    remeasure: true,
    measured: grubMeasured,
  });
  writeFileSync(changedLog, changed);
});

describe('ironroot-server profile learn and check (offline)', () => {
  it('learns a profile from a golden log that the same log then fits (exit 0)', async () => {
    const learnt = await cli([
      'profile',
      'learn',
      '--eventlog',
      goldenLog,
      '--name',
      'golden',
      '--out',
      profileFile,
    ]);
    expect(learnt.code).toBe(0);
    expect(learnt.stderr).toContain(`wrote profile golden to ${profileFile}`);
    expect(readFileSync(profileFile, 'utf8')).toMatch(
      /^# Firmware profile learnt by "ironroot-server profile learn"/,
    );
    const checked = await cli(['profile', 'check', '--profile', profileFile, '--eventlog', goldenLog]);
    expect(checked).toMatchObject({ code: 0, stdout: `${goldenLog} fits profile golden\n` });
  });

  it('prints the profile on standard output without --out, with only the PCRs asked for', async () => {
    const { code, stdout } = await cli([
      'profile',
      'learn',
      '--eventlog',
      goldenLog,
      '--name',
      'p',
      '--pcrs',
      '7,8',
    ]);
    expect(code).toBe(0);
    expect(stdout).toMatch(/\npcrs:\n {2}- 7\n {2}- 8\n/);
    expect(stdout).not.toContain('firmware:');
  });

  it('exits 1 for a log that does not fit, listing every violated rule with PCR, event, expected and got', async () => {
    const { code, stdout } = await cli([
      'profile',
      'check',
      '--profile',
      profileFile,
      '--eventlog',
      changedLog,
    ]);
    expect(code).toBe(1);
    expect(stdout).toContain(`${changedLog} does not fit profile golden: 1 violation(s)`);
    expect(stdout).toMatch(
      /boot\.kernel_cmdline \(PCR 8 event 94\): expected ".*rhgb quiet.*", got ".*init=\/evil.*"/,
    );
  });

  it('--json gives the same result as a document', async () => {
    const { code, stdout } = await cli([
      'profile',
      'check',
      '--profile',
      profileFile,
      '--eventlog',
      changedLog,
      '--json',
    ]);
    expect(code).toBe(1);
    const result = JSON.parse(stdout) as {
      profile: string;
      fits: boolean;
      violations: { rule: string; pcr: number; eventIndex: number }[];
    };
    expect(result).toMatchObject({ profile: 'golden', fits: false });
    expect(result.violations).toEqual([
      expect.objectContaining({ rule: 'boot.kernel_cmdline', pcr: 8, eventIndex: 94 }),
    ]);
  });

  it('exits 2 on bad input, naming what was wrong', async () => {
    const bad = join(mkdtempSync(join(tmpdir(), 'ironroot-bad-profile-')), 'bad.yaml');
    writeFileSync(bad, 'name: bad\npcrs: [4]\nboot:\n  applications: [nothex]\n');
    const invalid = await cli(['profile', 'check', '--profile', bad, '--eventlog', goldenLog]);
    expect(invalid.code).toBe(2);
    expect(invalid.stderr).toMatch(
      /invalid firmware profile .*bad\.yaml:\n {2}boot\.applications\[0\]: got "nothex"/,
    );
    const missing = await cli([
      'profile',
      'check',
      '--profile',
      profileFile,
      '--eventlog',
      join(dir, 'none.bin'),
    ]);
    expect(missing.code).toBe(2);
    expect(missing.stderr).toContain('cannot read event log');
    const garbage = await cli([
      'profile',
      'check',
      '--profile',
      profileFile,
      '--eventlog',
      fixturePath('eventlogs', 'keylime', 'binary_bios_measurements-bogus'),
    ]);
    expect(garbage.code).toBe(2);
    expect(garbage.stderr).toContain('ERR_EVENTLOG_');
    const pcrs = await cli(['profile', 'learn', '--eventlog', goldenLog, '--name', 'x', '--pcrs', '7,24']);
    expect(pcrs.code).toBe(1);
    expect(pcrs.stderr).toContain('--pcrs "7,24": allowed: PCR numbers 0..23');
  });
});

describe('ironroot-server profile list and show (admin socket)', () => {
  let server: TestServer;

  beforeAll(async () => {
    server = await startAttestServer({
      tpm_attestation: { ek_trust: 'any', measured_boot: { profiles_dir: dir, profiles: ['golden'] } },
    });
  });

  afterAll(() => server?.stop());

  it('lists the profiles the server loaded, marking the default', async () => {
    const { code, stdout } = await cli(['profile', 'list', '--admin-socket', server.adminSocket]);
    expect(code).toBe(0);
    expect(stdout).toMatch(/^golden\s+default\s+PCRs 0,2,4,7,8,9,14\s+.*golden\.yaml$/m);
    const json = JSON.parse(
      (await cli(['profile', 'list', '--admin-socket', server.adminSocket, '--output', 'json'])).stdout,
    );
    expect(json.measured_boot).toBe('profiles');
    expect(json.profiles.map((p: { name: string }) => p.name)).toEqual(['golden']);
  });

  it('learns from the last event log the server verified for a node (--from-node)', async () => {
    const swtpm = await startSwtpm();
    const agent = await (async () => {
      await replayIntoTpm(swtpm, readFileSync(goldenLog));
      return startTestAgent(server, { tcti: swtpm.tcti, event_log_path: goldenLog });
    })();
    try {
      const { spiffe_id } = await until('the agent to attest', () => healthy(agent));
      const out = join(dir, 'from-node.yaml');
      const learnt = await cli([
        'profile',
        'learn',
        '--from-node',
        spiffe_id,
        '--name',
        'from-node',
        '--out',
        out,
        '--admin-socket',
        server.adminSocket,
      ]);
      expect(learnt.code).toBe(0);
      expect(readFileSync(out, 'utf8')).toContain(
        `from the event log the server last verified for ${spiffe_id}`,
      );
      expect(await cli(['profile', 'check', '--profile', out, '--eventlog', goldenLog])).toMatchObject({
        code: 0,
      });
    } finally {
      await agent.stop();
      await swtpm.stop();
    }
    const unknown = await cli([
      'profile',
      'learn',
      '--from-node',
      'spiffe://example.org/agent/tpm/00',
      '--name',
      'x',
      '--admin-socket',
      server.adminSocket,
    ]);
    expect(unknown.code).toBe(1);
    expect(unknown.stderr).toContain('no attested agent with SPIFFE ID "spiffe://example.org/agent/tpm/00"');
    const both = await cli([
      'profile',
      'learn',
      '--from-node',
      'spiffe://example.org/x',
      '--eventlog',
      goldenLog,
      '--name',
      'x',
    ]);
    expect(both.code).toBe(1);
    expect(both.stderr).toContain(
      'profile learn needs exactly one of --eventlog FILE and --from-node SPIFFE_ID',
    );
  });

  it('shows one profile as YAML, and names an unknown one', async () => {
    const shown = await cli(['profile', 'show', '--name', 'golden', '--admin-socket', server.adminSocket]);
    expect(shown.code).toBe(0);
    expect(shown.stdout).toContain('name: golden');
    expect(shown.stdout).toContain('kernel_cmdline:');
    const unknown = await cli(['profile', 'show', '--name', 'nope', '--admin-socket', server.adminSocket]);
    expect(unknown.code).toBe(1);
    expect(unknown.stderr).toContain('no firmware profile named "nope"; loaded: golden');
  });
});
