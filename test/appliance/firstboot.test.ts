/**
 * The appliance's first-boot step (packer/files/guest/ironroot-firstboot) without booting: the script
 * runs in a throw-away Debian 12 root with the .deb installed (as the image has it), with a kernel
 * command line from a file (IRONROOT_FIRSTBOOT_CMDLINE), and the real `ironroot-agent validate`
 * judges what it writes. The config-partition path needs a block device and is exercised by booting
 * the image.
 *
 * Shares the root tarball, the re-packed Node and the build of the .deb with test/packaging/deb.test.ts
 * (same cache); runs as root (chroot, mount).
 */
import {
  copyFileSync,
  existsSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { type DebRoot, type Result, rootWithPackage } from '../helpers/debroot.js';
import { repoRoot } from '../helpers/dist.js';
import { opensslCert } from '../helpers/x509.js';

const SCRIPT = join(repoRoot, 'packer/files/guest/ironroot-firstboot');

describe('ironroot-firstboot: the appliance configures its agent from the kernel command line', () => {
  let out: string;
  let root: DebRoot;
  let bundle: string;

  beforeAll(async () => {
    out = mkdtempSync(join(tmpdir(), 'ironroot-firstboot-'));
    ({ root } = await rootWithPackage(out));
    mkdirSync(root.path('usr/lib/ironroot'), { recursive: true });
    copyFileSync(SCRIPT, root.path('usr/lib/ironroot/firstboot'));
    await root.must(['chmod', '0755', '/usr/lib/ironroot/firstboot']);
    await opensslCert({
      cert: join(out, 'bundle.pem'),
      key: join(out, 'bundle.key'),
      subject: '/CN=test root',
    });
    bundle = readFileSync(join(out, 'bundle.pem'), 'utf8');
  }, 900_000);

  afterAll(async () => {
    await root?.remove();
    if (out !== undefined) rmSync(out, { recursive: true, force: true });
  }, 60_000);

  // Each case starts as the image does: no config (the build removes the package's examples).
  beforeEach(() => {
    writeFileSync(root.path('usr/lib/ironroot/appliance-variant'), 'agent\n');
    for (const name of ['agent.yaml', 'agent.yaml.rejected', 'server.yaml', 'bundle.pem']) {
      rmSync(root.path(`etc/ironroot/${name}`), { force: true });
    }
  });

  function firstboot(cmdline: string): Promise<Result> {
    writeFileSync(root.path('tmp/cmdline'), `${cmdline}\n`);
    return root.exec(['env', 'IRONROOT_FIRSTBOOT_CMDLINE=/tmp/cmdline', '/usr/lib/ironroot/firstboot']);
  }

  const agentYaml = () => root.path('etc/ironroot/agent.yaml');
  const BOOT = 'BOOT_IMAGE=/vmlinuz root=UUID=x ro console=ttyS0';

  it('with nothing configured writes no agent.yaml and says the agent will not start', async () => {
    const result = await firstboot(BOOT);
    expect(result.code, result.stderr).toBe(0);
    expect(result.stderr).toContain('not configured');
    expect(result.stderr).toContain('ironroot-agent will not start');
    expect(existsSync(agentYaml())).toBe(false);
  });

  it('writes a valid agent.yaml (TPM, unix and systemd attestors) from ironroot.* parameters', async () => {
    writeFileSync(root.path('etc/ironroot/bundle.pem'), bundle);
    const result = await firstboot(
      `${BOOT} ironroot.server_address=10.0.2.2:8081 ironroot.trust_domain=example.org quiet`,
    );
    expect(result.code, result.stderr).toBe(0);
    expect(result.stderr).toContain('/etc/ironroot/agent.yaml is valid');
    expect(parse(readFileSync(agentYaml(), 'utf8'))).toEqual({
      server_address: '10.0.2.2:8081',
      trust_domain: 'example.org',
      trust_bundle: '/etc/ironroot/bundle.pem',
      attestation: 'tpm',
      tcti: 'device:/dev/tpmrm0',
      data_dir: '/var/lib/ironroot-agent',
      socket_path: '/run/ironroot-agent/public/api.sock',
      workload_attestors: { unix: {}, systemd: {} },
    });
    const group = readFileSync(root.path('etc/group'), 'utf8')
      .split('\n')
      .find((line) => line.startsWith('ironroot:'));
    expect(lstatSync(agentYaml()).gid).toBe(Number(group?.split(':')[2]));
    expect(lstatSync(agentYaml()).mode & 0o777).toBe(0o640);
  });

  it('writes trust_bundle_url when given one, and the last of repeated parameters wins', async () => {
    const result = await firstboot(
      `${BOOT} ironroot.server_address=a.example:1 ironroot.server_address=ironroot.example.org:8081 ironroot.trust_domain=example.org ironroot.trust_bundle_url=https://ironroot.example.org/bundle.pem`,
    );
    const config = parse(readFileSync(agentYaml(), 'utf8')) as Record<string, unknown>;
    expect(config.server_address).toBe('ironroot.example.org:8081');
    expect(config.trust_bundle_url).toBe('https://ironroot.example.org/bundle.pem');
    expect(config.trust_bundle).toBeUndefined();
    expect(result.stderr).toContain('wrote /etc/ironroot/agent.yaml from the kernel command line');
  });

  it('refuses a server address that is not host:port (no YAML can be smuggled in)', async () => {
    writeFileSync(root.path('etc/ironroot/bundle.pem'), bundle);
    const result = await firstboot(
      `${BOOT} ironroot.server_address=x"\ninsecure_bootstrap:true ironroot.trust_domain=example.org`,
    );
    expect(result.code).toBe(1);
    expect(result.stderr).toContain('ironroot.server_address= must be host:port');
    expect(result.stderr).toContain('ironroot-agent will not start');
    expect(existsSync(agentYaml())).toBe(false);
  });

  it('refuses a trust domain with capitals and a bundle URL that is not https', async () => {
    const domain = await firstboot(`${BOOT} ironroot.server_address=s:1 ironroot.trust_domain=Example.org`);
    expect(domain.code).toBe(1);
    expect(domain.stderr).toContain('ironroot.trust_domain= must be a trust domain name');
    const url = await firstboot(
      `${BOOT} ironroot.server_address=s:1 ironroot.trust_domain=example.org ironroot.trust_bundle_url=http://s/b`,
    );
    expect(url.code).toBe(1);
    expect(url.stderr).toContain('ironroot.trust_bundle_url= must be an https:// URL');
    expect(existsSync(agentYaml())).toBe(false);
  });

  it('refuses without a bundle: neither ironroot.trust_bundle_url= nor /etc/ironroot/bundle.pem', async () => {
    const result = await firstboot(`${BOOT} ironroot.server_address=s:1 ironroot.trust_domain=example.org`);
    expect(result.code).toBe(1);
    expect(result.stderr).toContain(
      'ironroot.trust_bundle_url= is missing and /etc/ironroot/bundle.pem does not exist',
    );
  });

  it('moves a config the agent rejects aside, so the unit does not start, and says so', async () => {
    writeFileSync(root.path('etc/ironroot/bundle.pem'), 'not a certificate\n');
    const result = await firstboot(`${BOOT} ironroot.server_address=s:1 ironroot.trust_domain=example.org`);
    expect(result.code).toBe(1);
    expect(result.stderr).toContain('trust_bundle /etc/ironroot/bundle.pem is not a PEM bundle');
    expect(result.stderr).toContain(
      'is invalid (see the validate output above); moved to agent.yaml.rejected',
    );
    expect(existsSync(agentYaml())).toBe(false);
    expect(existsSync(root.path('etc/ironroot/agent.yaml.rejected'))).toBe(true);
  });

  it("keeps an earlier boot's agent.yaml when nothing new is given", async () => {
    writeFileSync(agentYaml(), 'server_address: kept:1\n');
    const result = await firstboot(BOOT);
    expect(result.code).toBe(0);
    expect(result.stderr).toContain('keeping /etc/ironroot/agent.yaml from an earlier boot');
    expect(readFileSync(agentYaml(), 'utf8')).toBe('server_address: kept:1\n');
  });

  it('the server variant is configured only from the partition, never the command line', async () => {
    writeFileSync(root.path('usr/lib/ironroot/appliance-variant'), 'server\n');
    const result = await firstboot(`${BOOT} ironroot.server_address=s:1 ironroot.trust_domain=example.org`);
    expect(result.code).toBe(1);
    expect(result.stderr).toContain('the server variant is configured only from the IRONROOT partition');
    expect(existsSync(root.path('etc/ironroot/server.yaml'))).toBe(false);
  });
});
