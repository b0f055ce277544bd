import { copyFileSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import type { AttestedNode } from '../../src/server/datastore/datastore.js';
import { ekCaDir, removeHsm, startAttestServer, TD, type TestServer, until } from '../attestation/harness.js';
import {
  type Appliance,
  type BuiltImage,
  bootAppliance,
  buildImage,
  GUEST_SERVER_ADDRESS,
  imageWithGrubCfg,
} from '../helpers/appliance.js';
import { runningVmProcesses, stopAllVms } from '../helpers/qemu.js';
import { type ManufacturedTpm, manufactureTpm } from '../helpers/swtpm.js';
import { entry } from '../workload/harness.js';

/**
 * The appliance image end to end: the image scripts/build-image.mjs builds boots under OVMF (qemu TCG)
 * with a swtpm vTPM, its systemd starts ironroot-agent, and the agent attests with the real measured
 * boot to the server running in this process, judged against the profile learnt from the image's own
 * first boot. Boots run one after another; TCG makes each take minutes, so waits are long (they bound
 * how long the test waits, nothing is asserted about how long anything took).
 */

const PROFILE = 'ironroot-appliance-agent';
const BOOT_MS = 600_000;
const REATTEST_INTERVAL = '10s';
const REPORTER_ID = `spiffe://${TD}/appliance/svid-reporter`;

let built: BuiltImage;
let server: TestServer;
/** Every TPM is made here, so all share one swtpm-localca: the server's EK CA. */
let factory: string;
let profilesDir: string;
let caDir: string;
const tpms: ManufacturedTpm[] = [];

async function newTpm(name: string): Promise<ManufacturedTpm> {
  const tpm = await manufactureTpm(factory, join(factory, name));
  tpms.push(tpm);
  return tpm;
}

/** The config partition's files: the agent talks to the host server through qemu's forward. */
function applianceConfig(): Record<string, string> {
  return {
    'agent.yaml': stringify({
      server_address: GUEST_SERVER_ADDRESS,
      trust_domain: TD,
      trust_bundle: '/etc/ironroot/bundle.pem',
      attestation: 'tpm',
      tcti: 'device:/dev/tpmrm0',
      data_dir: '/var/lib/ironroot-agent',
      socket_path: '/run/ironroot-agent/public/api.sock',
      // Short waits: a refused or early (network not up yet) attempt is retried soon.
      retry_initial: '1s',
      retry_max: '10s',
      sync_interval: '2s',
      workload_attestors: { unix: {}, systemd: {} },
    }),
    'bundle.pem': readFileSync(server.bundleFile, 'utf8'),
  };
}

let bootedAt = 0;

/** Prints how far into the current boot `what` happened: for the reader, never asserted. */
function note(what: string): void {
  console.info(`[appliance] ${what} ${Math.round((Date.now() - bootedAt) / 1000)} s after qemu started`);
}

function boot(image: string, secureBoot: boolean, tpm: ManufacturedTpm): Promise<Appliance> {
  bootedAt = Date.now();
  return bootAppliance({
    image,
    secureBoot,
    tpmState: tpm.stateDir,
    serverPort: Number(server.address.split(':')[1]),
    config: applianceConfig(),
  });
}

function selectorsOf(node: AttestedNode): string[] {
  return node.selectors.map((s) => `${s.type}:${s.value}`);
}

/** The server's first refusal of a node attestation since `logs` was cleared. */
function refusal(): Promise<Record<string, unknown>> {
  return until(
    'the server to refuse the appliance',
    () => server.logs.decisions().find((d) => d.operation === 'attest' && d.result === 'refused'),
    BOOT_MS,
  );
}

beforeAll(async () => {
  built = await buildImage('agent');
  factory = mkdtempSync(join(tmpdir(), 'ironroot-tpm-factory-'));
  profilesDir = mkdtempSync(join(tmpdir(), 'ironroot-profiles-'));
  copyFileSync(built.profile, join(profilesDir, `${PROFILE}.yaml`));
  caDir = ekCaDir(await newTpm('tpm-secureboot'));
  server = await startAttestServer({
    tpm_attestation: {
      ek_ca_dir: caDir,
      measured_boot: { profiles_dir: profilesDir, profiles: [PROFILE] },
      reattest_interval: REATTEST_INTERVAL,
      // An agent under TCG can be slow to answer; drift, not a late answer, is what this test is about.
      reattest_deadline: '30s',
    },
  });
});

afterAll(async () => {
  await stopAllVms();
  await server?.stop();
  await removeHsm();
  const serverDir = server === undefined ? undefined : dirname(server.dataDir);
  for (const dir of [factory, profilesDir, caDir, serverDir])
    if (dir !== undefined) rmSync(dir, { recursive: true, force: true });
});

describe('the appliance image with Secure Boot on', () => {
  let vm: Appliance;
  let agentId: string;

  beforeAll(async () => {
    const tpm = tpms[0];
    if (tpm === undefined) throw new Error('no TPM was manufactured');
    vm = await boot(built.image, true, tpm);
  });

  afterAll(() => vm?.stop());

  it('attests from systemd with the real measured boot: tpm:profile of the image and Secure Boot enabled', async () => {
    // A refusal ends the wait at once, with the server's reason instead of a timeout.
    const outcome = await until(
      'the appliance to attest',
      async () =>
        (await server.server.datastore.listNodes()).find((n) => n.trust.state === 'trusted') ??
        server.logs.decisions().find((d) => d.operation === 'attest' && d.result === 'refused'),
      BOOT_MS,
    );
    if (!('spiffeId' in outcome))
      throw new Error(`the server refused the appliance: ${JSON.stringify(outcome)}`);
    const node = outcome as AttestedNode;
    note(`attested (Secure Boot on) as ${node.spiffeId} with ${selectorsOf(node).join(' ')}`);
    agentId = node.spiffeId;
    expect(agentId).toMatch(new RegExp(`^spiffe://${TD}/agent/tpm/[0-9a-f]{64}$`));
    const selectors = selectorsOf(node);
    expect(selectors).toContain(`tpm:profile:${PROFILE}`);
    expect(selectors).toContain('tpm:secureboot:enabled');
    // The agent that attested is systemd's unit, reading the kernel's copy of the firmware's log.
    const guest = await vm.qga();
    const unit = await guest.exec('systemctl show -p ActiveState -p SubState ironroot-agent.service');
    expect(unit.stdout).toContain('ActiveState=active');
    expect(unit.stdout).toContain('SubState=running');
    const log = await guest.exec('wc -c < /sys/kernel/security/tpm0/binary_bios_measurements');
    expect(Number(log.stdout.trim())).toBeGreaterThan(0);
  });

  it('a systemd service in the guest gets its X.509-SVID by its systemd:id selector and reports it on the console', async () => {
    expect(agentId).toBeDefined();
    await server.server.datastore.createEntry(
      entry('/appliance/svid-reporter', agentId, ['systemd:id:svid-reporter.service']),
      'test',
    );
    const mark = vm.serial().length;
    const reporter = [
      'while :; do',
      '  if out=$(ironroot-agent api fetch x509 --timeout 30s 2>&1); then',
      `    echo "svid-reporter: identity $(printf '%s\\n' "$out" | sed -n 's/^SPIFFE ID: *//p')"`,
      '  else',
      `    echo "svid-reporter: no identity: $(printf '%s' "$out" | tr '\\n' ' ')"`,
      '  fi',
      '  sleep 3',
      'done',
    ].join('\n');
    const started = await (await vm.qga()).run('/usr/bin/systemd-run', [
      '--unit=svid-reporter',
      '--property=StandardOutput=tty',
      '--property=StandardError=tty',
      '--property=TTYPath=/dev/console',
      '/bin/sh',
      '-c',
      reporter,
    ]);
    expect(started.exitCode, started.stderr).toBe(0);
    const reported = await vm.waitFor(/svid-reporter: identity (spiffe:\/\/\S+)\n/, BOOT_MS, mark);
    note(`the workload reported ${reported[1]}`);
    expect(reported[1]).toBe(REPORTER_ID);
  });

  it('a PCR extend in the running guest makes the node untrusted and the workload lose its identity', async () => {
    expect(agentId).toBeDefined();
    expect((await server.server.datastore.getNode(agentId))?.trust.state).toBe('trusted');
    const mark = vm.serial().length;
    // PCR 8 is in the profile (grub's commands and the kernel command line); nothing logs this extend.
    const extend = await (await vm.qga()).exec(
      `TPM2TOOLS_TCTI=device:/dev/tpmrm0 tpm2_pcrextend 8:sha256=${'ab'.repeat(32)}`,
    );
    expect(extend.exitCode, extend.stderr).toBe(0);
    const trust = await until(
      'the server to mark the node untrusted',
      async () => {
        const t = (await server.server.datastore.getNode(agentId))?.trust;
        return t?.state === 'untrusted' ? t : undefined;
      },
      BOOT_MS,
    );
    note(`untrusted after the drift: ${trust.code}: ${trust.reason}`);
    expect(trust.code).toBe('ERR_ATTEST_EVENTLOG_REPLAY');
    expect(trust.reason).toMatch(/PCR 8/);
    const lost = await vm.waitFor(/svid-reporter: no identity: (.*)\n/, BOOT_MS, mark);
    // The Workload API's PermissionDenied, as the agent and the CLI word it.
    expect(lost[1]).toContain('no identity issued');
    expect(lost[1]).toContain('the agent has no identity for this process');
  });
});

describe('the appliance image refused', () => {
  let vm: Appliance | undefined;
  let work: string | undefined;

  afterAll(async () => {
    await vm?.stop();
    if (work !== undefined) rmSync(work, { recursive: true, force: true });
  });

  it('with Secure Boot off, naming the Secure Boot rule', async () => {
    const known = (await server.server.datastore.listNodes()).length;
    server.logs.lines.length = 0;
    vm = await boot(built.image, false, await newTpm('tpm-secureboot-off'));
    const decision = await refusal();
    note(`refused (Secure Boot off): ${decision.reason}: ${decision.detail}`);
    expect(decision.reason).toBe('ERR_ATTEST_PROFILE_VIOLATION');
    expect(String(decision.detail)).toContain('secure_boot.enabled (PCR 7): expected enabled, got disabled');
    // The agent in the guest was told why (its log reaches the console through journald).
    await vm.waitFor(/ERR_ATTEST_PROFILE_VIOLATION/, BOOT_MS);
    expect(await server.server.datastore.listNodes()).toHaveLength(known);
    await vm.stop();
    vm = undefined;
  });

  it('with an edited kernel command line (grub.cfg on the ESP), naming the kernel command line rule', async () => {
    work = mkdtempSync(join(tmpdir(), 'ironroot-edited-image-'));
    const edited = await imageWithGrubCfg(built.image, work, (cfg) =>
      cfg.replace(/^(\s*linux\S*\s+\S+.*)$/m, '$1 mitigations=off'),
    );
    const known = (await server.server.datastore.listNodes()).length;
    server.logs.lines.length = 0;
    vm = await boot(edited, true, await newTpm('tpm-edited-cmdline'));
    const decision = await refusal();
    note(`refused (edited kernel command line): ${decision.reason}: ${decision.detail}`);
    expect(decision.reason).toBe('ERR_ATTEST_PROFILE_VIOLATION');
    expect(String(decision.detail)).toMatch(
      /boot\.kernel_cmdline \(PCR 8 event \d+\): expected .*, got .*mitigations=off/,
    );
    await vm.waitFor(/ERR_ATTEST_PROFILE_VIOLATION/, BOOT_MS);
    expect(await server.server.datastore.listNodes()).toHaveLength(known);
    await vm.stop();
    vm = undefined;
  });
});

describe('after the boots', () => {
  it('no qemu or swtpm is left running', async () => {
    expect(runningVmProcesses()).toBe(0);
  });
});
