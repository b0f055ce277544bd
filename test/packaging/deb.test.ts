/**
 * The .deb, installed the way an operator would: built by scripts/build-deb.mjs, installed with dpkg
 * into a throw-away Debian 12 root (mmdebstrap, chroot), then the installed units' ExecStart run from
 * that root under each unit's user, groups, capability bounding set, no_new_privs and umask: a server
 * on a SoftHSM2 token, an agent attesting a swtpm, and a workload (nobody) fetching its X.509-SVID
 * over the Workload API socket.
 *
 * The root is minbase plus PACKAGE_ROOT (test/helpers/debroot.ts), cached as a tarball in
 * /var/cache/ironroot-test; Node is the host's NodeSource nodejs re-packed with dpkg-repack
 * (Debian 12's own nodejs is 18, too old), also cached. The first run downloads the root and
 * re-packs Node besides building the .deb (about 6 minutes on two shared cores, the build
 * meanwhile); later runs reuse both and take about a minute, mostly the build (tsc, xz). Runs as
 * root: mmdebstrap --mode=root, chroot, mount.
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { copyFileSync, lstatSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse, stringify } from 'yaml';
import { type DebRoot, rootWithPackage } from '../helpers/debroot.js';
import { repoRoot } from '../helpers/dist.js';
import { freePort } from '../helpers/server.js';
import { type Swtpm, startSwtpm } from '../helpers/swtpm.js';
import { ServiceUnit } from '../helpers/systemd-unit.js';

const run = promisify(execFile);

const UNITS = ['ironroot-server.service', 'ironroot-agent.service'];
const TD = 'example.org';

interface Account {
  name: string;
  uid: number;
  gid: number;
  home: string;
  shell: string;
}

/** Users and groups as the root's own /etc/passwd and /etc/group say (the host's may differ). */
function accounts(root: DebRoot): {
  user(name: string): Account | undefined;
  gid(name: string): number | undefined;
  memberOf(user: string): string[];
} {
  const table = (file: string) =>
    readFileSync(root.path(file), 'utf8')
      .split('\n')
      .filter((l) => l !== '')
      .map((l) => l.split(':'));
  const passwd = table('etc/passwd');
  const group = table('etc/group');
  return {
    user: (name) => {
      const row = passwd.find((r) => r[0] === name);
      return row === undefined
        ? undefined
        : { name, uid: Number(row[2]), gid: Number(row[3]), home: row[5] ?? '', shell: row[6] ?? '' };
    },
    gid: (name) => {
      const row = group.find((r) => r[0] === name);
      return row === undefined ? undefined : Number(row[2]);
    },
    memberOf: (user) => group.filter((r) => (r[3] ?? '').split(',').includes(user)).map((r) => r[0] ?? ''),
  };
}

/** Polls `check` every 100 ms for up to a minute; the failure names what was awaited, with output. */
async function waitFor<T>(what: () => string, check: () => Promise<T | undefined>): Promise<T> {
  const deadline = Date.now() + 60_000;
  for (;;) {
    const value = await check();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what()}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

function mode(path: string): number {
  return lstatSync(path).mode & 0o7777;
}

describe('the .deb: built with dpkg-deb, installed into a Debian 12 root, its units run from there', () => {
  let out: string;
  let deb: string;
  let root: DebRoot;
  let swtpm: Swtpm | undefined;

  beforeAll(async () => {
    out = mkdtempSync(join(tmpdir(), 'ironroot-deb-'));
    ({ root, deb } = await rootWithPackage(out));
  }, 900_000);

  afterAll(async () => {
    await swtpm?.stop();
    await root?.remove();
    if (out !== undefined) rmSync(out, { recursive: true, force: true });
  }, 60_000);

  it('is an amd64 package of this version that needs Node 20.19 and installs nothing outside its places', async () => {
    const pkg = JSON.parse(readFileSync(join(repoRoot, 'package.json'), 'utf8')) as { version: string };
    const field = async (name: string) => (await run('dpkg-deb', ['-f', deb, name])).stdout.trim();
    expect(basename(deb)).toBe(`ironroot_${pkg.version}_amd64.deb`);
    expect(await field('Package')).toBe('ironroot');
    expect(await field('Version')).toBe(pkg.version);
    expect(await field('Architecture')).toBe('amd64');
    expect((await field('Depends')).split(', ')).toEqual(
      expect.arrayContaining([
        'nodejs (>= 20.19)',
        `nodejs (<< ${Number(process.versions.node.split('.')[0]) + 1})`,
        'adduser',
        'libtss2-tctildr0',
      ]),
    );
    const info = (await run('dpkg-deb', ['-I', deb])).stdout;
    expect(info).toMatch(/ postinst +#!\/bin\/sh/);
    expect(info).toMatch(/ conffiles/);
    const { stdout: conffiles } = await run('dpkg-deb', ['-I', deb, 'conffiles']);
    expect(conffiles.trim().split('\n')).toEqual(['/etc/ironroot/server.yaml', '/etc/ironroot/agent.yaml']);

    const listing = (await run('dpkg-deb', ['-c', deb], { maxBuffer: 64 * 1024 * 1024 })).stdout
      .split('\n')
      .filter((l) => l !== '');
    const paths = listing.map((l) => (l.split(/\s+/)[5] ?? '').replace(/^\./, ''));
    // Its own trees, and the directories on the way to them.
    const own = [
      '/opt/ironroot/',
      '/etc/ironroot/',
      '/lib/systemd/system/ironroot-',
      '/usr/share/doc/ironroot/',
    ];
    const links = ['/usr/bin/ironroot-server', '/usr/bin/ironroot-agent'];
    const parents = [
      '/',
      '/opt/',
      '/etc/',
      '/lib/',
      '/lib/systemd/',
      '/lib/systemd/system/',
      '/usr/',
      '/usr/bin/',
      '/usr/share/',
      '/usr/share/doc/',
    ];
    const outside = paths.filter(
      (p) => !own.some((prefix) => p.startsWith(prefix)) && !links.includes(p) && !parents.includes(p),
    );
    expect(outside).toEqual([]);
    expect(listing.every((l) => l.split(/\s+/)[1] === 'root/root')).toBe(true);
  });

  it('installs the package and only its production dependencies under /opt/ironroot, with /usr/bin links', async () => {
    for (const file of [
      'package.json',
      'package-lock.json',
      'bin/ironroot-server.js',
      'bin/ironroot-agent.js',
      'dist/server/cli/main.js',
      'dist/agent/cli/main.js',
      'proto/ironroot/agent/v1/agent.proto',
      'node_modules/better-sqlite3/package.json',
      'node_modules/koffi/package.json',
      'node_modules/pkcs11js/package.json',
    ]) {
      expect(lstatSync(root.path(join('opt/ironroot', file))).isFile(), file).toBe(true);
    }
    for (const dev of ['vitest', 'typescript', '@biomejs/biome', 'fast-check']) {
      expect(() => lstatSync(root.path(join('opt/ironroot/node_modules', dev))), dev).toThrow();
    }
    expect(mode(root.path('opt/ironroot/bin/ironroot-server.js'))).toBe(0o755);
    // Loaded by Node, never executed.
    expect(
      mode(root.path('opt/ironroot/node_modules/better-sqlite3/build/Release/better_sqlite3.node')),
    ).toBe(0o644);
    expect(readFileSync(root.path('usr/share/doc/ironroot/copyright'), 'utf8')).toContain(
      'License: Apache-2.0',
    );
    expect((await root.must(['readlink', '/usr/bin/ironroot-server'])).stdout.trim()).toBe(
      '/opt/ironroot/bin/ironroot-server.js',
    );
    const pkg = JSON.parse(readFileSync(join(repoRoot, 'package.json'), 'utf8')) as { version: string };
    for (const bin of ['ironroot-server', 'ironroot-agent']) {
      expect((await root.must([bin, '--version'])).stdout).toContain(pkg.version);
    }
  });

  it('creates the ironroot system user, and gives it the configuration as root:ironroot 0640 (dir 0750)', async () => {
    const ids = accounts(root);
    const user = ids.user('ironroot');
    expect(user).toBeDefined();
    if (user === undefined) return;
    expect(user.uid).toBeLessThan(1000);
    expect(user.gid).toBe(ids.gid('ironroot'));
    expect(user.shell).toBe('/usr/sbin/nologin');
    expect(user.home).toBe('/nonexistent');
    for (const [path, wanted] of [
      ['etc/ironroot', 0o750],
      ['etc/ironroot/ek-ca', 0o750],
      ['etc/ironroot/server.yaml', 0o640],
      ['etc/ironroot/agent.yaml', 0o640],
    ] as const) {
      const stat = lstatSync(root.path(path));
      expect({ path, mode: stat.mode & 0o7777, uid: stat.uid, gid: stat.gid }).toEqual({
        path,
        mode: wanted,
        uid: 0,
        gid: user.gid,
      });
    }
    // Installing again (an upgrade or a reinstall) keeps the user and the modes.
    await root.must(['dpkg', '-i', `/tmp/${basename(deb)}`]);
    expect(accounts(root).user('ironroot')).toEqual(user);
    expect(mode(root.path('etc/ironroot/server.yaml'))).toBe(0o640);
  });

  it('installs the units disabled, and systemd-analyze verify and security accept them', async () => {
    for (const unit of UNITS) {
      expect(lstatSync(root.path(join('lib/systemd/system', unit))).isFile()).toBe(true);
      const enabled = await root.exec(['systemctl', 'is-enabled', unit]);
      expect({ unit, state: enabled.stdout.trim() }).toEqual({ unit, state: 'disabled' });
    }
    const verify = await root.exec([
      'systemd-analyze',
      'verify',
      ...UNITS.map((u) => `/lib/systemd/system/${u}`),
    ]);
    expect(verify).toEqual({ code: 0, stdout: '', stderr: '' });
    // systemd's own exposure score (0 best, 10 worst) of the sandboxing lines.
    for (const [unit, threshold] of [
      ['ironroot-server.service', 2],
      ['ironroot-agent.service', 3],
    ] as const) {
      const security = await root.exec([
        'systemd-analyze',
        'security',
        '--offline=yes',
        `--threshold=${threshold * 10}`,
        `/lib/systemd/system/${unit}`,
      ]);
      expect({ unit, code: security.code, tail: security.stdout.trim().split('\n').at(-1) }).toMatchObject({
        unit,
        code: 0,
      });
    }
  });

  it('the units keep the documented directories: admin socket 0750 as ironroot, Workload API 0755, state 0700', () => {
    const server = ServiceUnit.read(root.path('lib/systemd/system/ironroot-server.service'));
    const agent = ServiceUnit.read(root.path('lib/systemd/system/ironroot-agent.service'));
    expect(server.user).toBe('ironroot');
    expect(server.directoryCommands()).toEqual([
      ['install', '-d', '-m', '0750', '-o', 'ironroot', '-g', 'ironroot', '/run/ironroot-server'],
      ['install', '-d', '-m', '0700', '-o', 'ironroot', '-g', 'ironroot', '/var/lib/ironroot-server'],
    ]);
    expect(agent.directoryCommands()).toEqual([
      ['install', '-d', '-m', '0755', '-o', 'root', '-g', 'root', '/run/ironroot-agent'],
      ['install', '-d', '-m', '0755', '-o', 'root', '-g', 'root', '/run/ironroot-agent/public'],
      ['install', '-d', '-m', '0700', '-o', 'root', '-g', 'root', '/var/lib/ironroot-agent'],
    ]);
    for (const unit of [server, agent]) {
      expect(unit.get('NoNewPrivileges')).toBe('yes');
      expect(unit.get('ProtectSystem')).toBe('strict');
      expect(unit.get('PrivateTmp')).toBe('yes');
      expect(unit.get('UMask')).toBe('0077');
    }
    expect(server.get('CapabilityBoundingSet')).toBe('');
    expect(agent.user).toBe('root');
    expect(agent.get('CapabilityBoundingSet')).toBe('CAP_SYS_PTRACE CAP_DAC_READ_SEARCH');
    expect(agent.get('SupplementaryGroups')).toBe('tss');
    expect([agent.get('DevicePolicy'), agent.get('DeviceAllow')]).toEqual(['closed', '/dev/tpmrm0 rw']);
    const configs = [server, agent].map((u) =>
      parse(readFileSync(root.path(u.execStart().at(-1) ?? ''), 'utf8')),
    );
    expect(configs[0]).toMatchObject({
      data_dir: '/var/lib/ironroot-server',
      admin_socket: '/run/ironroot-server/admin.sock',
    });
    expect(configs[1]).toMatchObject({
      data_dir: '/var/lib/ironroot-agent',
      socket_path: '/run/ironroot-agent/public/api.sock',
    });
  });

  it('refuses to start on the default configuration until it is completed, saying what is missing', async () => {
    const server = await root.exec(['ironroot-server', 'validate', '--config', '/etc/ironroot/server.yaml']);
    expect(server.code).toBe(1);
    expect(server.stderr).toContain(
      'tpm_attestation.ek_ca_dir /etc/ironroot/ek-ca holds no certificates; add your TPM vendors',
    );
    const agent = await root.exec(['ironroot-agent', 'validate', '--config', '/etc/ironroot/agent.yaml']);
    expect(agent.code).toBe(1);
    expect(agent.stderr).toContain(
      'trust_bundle /etc/ironroot/bundle.pem cannot be read (ENOENT: no such file or directory',
    );
  });

  it("runs the units' ExecStart from the root: the agent attests a swtpm, a workload fetches its X.509-SVID", async () => {
    swtpm = await startSwtpm();
    const server = ServiceUnit.read(root.path('lib/systemd/system/ironroot-server.service'));
    const agent = ServiceUnit.read(root.path('lib/systemd/system/ironroot-agent.service'));

    // What an operator does after installing (README, "Install on a host"): a SoftHSM2 token for the
    // ironroot user, its PIN file, the EK CA certificates, free ports, and the agent's TPM.
    await root.must(['adduser', '--quiet', 'ironroot', 'softhsm']);
    await root.must([
      'setpriv',
      '--reuid=ironroot',
      '--regid=ironroot',
      '--init-groups',
      'softhsm2-util',
      '--init-token',
      '--free',
      '--label',
      'ironroot',
      '--pin',
      '48151623',
      '--so-pin',
      '87654321',
    ]);
    writeFileSync(root.path('etc/ironroot/hsm.pin'), '48151623\n', { mode: 0o600 });
    await root.must(['chown', 'ironroot:ironroot', '/etc/ironroot/hsm.pin']);
    copyFileSync(swtpm.ekRootCertPath, root.path('etc/ironroot/ek-ca/root.pem'));
    copyFileSync(swtpm.ekIssuerCertPath, root.path('etc/ironroot/ek-ca/issuer.pem'));
    const [agentPort, healthPort] = [await freePort(), await freePort()];
    const edit = (file: string, changes: Record<string, unknown>) => {
      const path = root.path(file);
      writeFileSync(path, stringify({ ...parse(readFileSync(path, 'utf8')), ...changes }));
    };
    edit('etc/ironroot/server.yaml', {
      bind_address: `127.0.0.1:${agentPort}`,
      health_address: `127.0.0.1:${healthPort}`,
    });
    edit('etc/ironroot/agent.yaml', { server_address: `127.0.0.1:${agentPort}`, tcti: swtpm.tcti });

    // Read after the changes above: systemd gives a unit's user the groups /etc/group lists it in.
    const ids = accounts(root);
    for (const command of server.directoryCommands()) await root.must(command);
    const serverProcess = root.start(server.command(ids.memberOf(server.user)));
    await waitFor(
      () => `the server to answer on its admin socket (its output: ${serverProcess.output()})`,
      async () => (await root.exec(['ironroot-server', 'healthcheck'])).code === 0 || undefined,
    );
    const bundle = await root.must(['ironroot-server', 'bundle', 'show', '--format', 'pem']);
    writeFileSync(root.path('etc/ironroot/bundle.pem'), bundle.stdout);

    for (const command of agent.directoryCommands()) await root.must(command);
    const agentProcess = root.start(agent.command(ids.memberOf(agent.user)));
    const health = await waitFor(
      () =>
        `the agent to attest (its output: ${agentProcess.output()}; the server's: ${serverProcess.output()})`,
      async () => {
        const result = await root.exec([
          'ironroot-agent',
          'healthcheck',
          '--data-dir',
          '/var/lib/ironroot-agent',
        ]);
        return result.code === 0 ? (JSON.parse(result.stdout) as { spiffe_id: string }) : undefined;
      },
    );
    expect(health.spiffe_id).toMatch(new RegExp(`^spiffe://${TD}/agent/tpm/[0-9a-f]{64}$`));

    const nobody = ids.user('nobody');
    expect(nobody).toBeDefined();
    // unix:path and unix:sha256 come through another user's /proc/<pid>/exe: they prove that the
    // agent unit's two capabilities are enough for what workload attestation reads.
    const node = createHash('sha256')
      .update(readFileSync(root.path('usr/bin/node')))
      .digest('hex');
    await root.must([
      'ironroot-server',
      'entry',
      'create',
      '--parent-id',
      health.spiffe_id,
      '--spiffe-id',
      `spiffe://${TD}/installed/workload`,
      '--selector',
      `unix:uid:${nobody?.uid}`,
      '--selector',
      'unix:path:/usr/bin/node',
      '--selector',
      `unix:sha256:${node}`,
    ]);
    const fetched = await waitFor(
      () => `the workload to get its SVID (the agent's output: ${agentProcess.output()})`,
      async () => {
        const result = await root.exec([
          'setpriv',
          '--reuid=nobody',
          '--regid=nogroup',
          '--clear-groups',
          'ironroot-agent',
          'api',
          'fetch',
          'x509',
          '--socket-path',
          '/run/ironroot-agent/public/api.sock',
          '--output',
          'json',
        ]);
        return result.code === 0
          ? (JSON.parse(result.stdout) as { svids: { spiffe_id: string }[] })
          : undefined;
      },
    );
    expect(fetched.svids.map((s) => s.spiffe_id)).toEqual([`spiffe://${TD}/installed/workload`]);

    // The processes made what the docs promise, as the unit's user.
    const ironroot = ids.user('ironroot');
    const owned = (path: string) => {
      const stat = lstatSync(root.path(path));
      return { path, mode: stat.mode & 0o777, uid: stat.uid };
    };
    expect(owned('run/ironroot-server/admin.sock')).toEqual({
      path: 'run/ironroot-server/admin.sock',
      mode: 0o770,
      uid: ironroot?.uid,
    });
    expect(owned('run/ironroot-server')).toEqual({
      path: 'run/ironroot-server',
      mode: 0o750,
      uid: ironroot?.uid,
    });
    expect(owned('var/lib/ironroot-server/datastore.sqlite3')).toEqual({
      path: 'var/lib/ironroot-server/datastore.sqlite3',
      mode: 0o600,
      uid: ironroot?.uid,
    });
    expect(owned('run/ironroot-agent/public/api.sock')).toEqual({
      path: 'run/ironroot-agent/public/api.sock',
      mode: 0o777,
      uid: 0,
    });
    expect(owned('var/lib/ironroot-agent')).toEqual({ path: 'var/lib/ironroot-agent', mode: 0o700, uid: 0 });
    // Both ran until now and stop cleanly on SIGTERM, as `systemctl stop` asks them to.
    expect(await agentProcess.stop()).toBe(0);
    expect(await serverProcess.stop()).toBe(0);
  }, 240_000);

  it('dpkg --purge removes the files, configuration and mode overrides, and keeps the user and the state', async () => {
    await root.must(['dpkg', '--purge', 'ironroot']);
    for (const gone of [
      'opt/ironroot',
      'usr/bin/ironroot-server',
      'lib/systemd/system/ironroot-server.service',
      'lib/systemd/system/ironroot-agent.service',
      'etc/ironroot/server.yaml',
      'etc/ironroot/agent.yaml',
    ]) {
      expect(() => lstatSync(root.path(gone)), gone).toThrow();
    }
    expect((await root.must(['dpkg-statoverride', '--list'])).stdout).not.toContain('/etc/ironroot');
    // Files the operator made, the CA's datastore, the node's identity and the account stay.
    expect(lstatSync(root.path('etc/ironroot/hsm.pin')).isFile()).toBe(true);
    expect(lstatSync(root.path('var/lib/ironroot-server/datastore.sqlite3')).isFile()).toBe(true);
    expect(lstatSync(root.path('var/lib/ironroot-agent/agent-svid.pem')).isFile()).toBe(true);
    expect(accounts(root).user('ironroot')).toBeDefined();
  });
});
