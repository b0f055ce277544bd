#!/usr/bin/env node
// Builds the Debian package `ironroot_<version>_amd64.deb` with dpkg-deb: the package and its
// production npm dependencies under /opt/ironroot, /usr/bin links to both executables, the systemd
// units (not enabled) and the default configuration from packaging/. Architecture amd64 because
// better-sqlite3, koffi and pkcs11js are native addons, built here for this machine's Node ABI.
//
//   node scripts/build-deb.mjs [--out DIR] [--fast]     (npm run package:deb; DIR defaults to build/)
//
// --fast compresses with gzip -1 instead of xz: for a .deb installed right away and thrown away (the
// appliance image build), where xz is most of the time and saves nothing.
//
// Prints the path of the .deb on standard output. Needs dpkg-deb, npm, and a C++ toolchain when the
// addons have no prebuilt binary for this Node.
import { spawnSync } from 'node:child_process';
import {
  chmodSync,
  copyFileSync,
  cpSync,
  existsSync,
  lstatSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const packaging = join(root, 'packaging');

// The Node the package runs on: at least package.json's engines (Debian 12's own nodejs is 18, so in
// practice NodeSource's nodejs), and the major version building it, because better-sqlite3 is
// compiled against that Node's ABI (koffi and pkcs11js use the stable N-API) and another major
// refuses to load it.
const [major] = process.versions.node.split('.');
const NODE_DEPENDENCY = `nodejs (>= 20.19), nodejs (<< ${Number(major) + 1})`;
// libtss2-tctildr0 loads the TCTIs the agent's `tcti` names (device:, swtpm:, mssim:); through
// libtss2-tcti-device0 it pulls in tpm-udev, which makes the tss group the agent unit joins.
const DEPENDS = [NODE_DEPENDENCY, 'adduser', 'libc6', 'libtss2-tctildr0', 'libtss2-tcti-device0', 'tpm-udev'];
const SUGGESTS = ['softhsm2', 'libtss2-tcti-tabrmd0', 'tpm2-abrmd'];
const CONFFILES = ['/etc/ironroot/server.yaml', '/etc/ironroot/agent.yaml'];

function fail(message) {
  process.stderr.write(`build-deb: ${message}\n`);
  process.exit(1);
}

function run(cmd, args, cwd) {
  const result = spawnSync(cmd, args, { cwd, stdio: ['ignore', process.stderr, 'inherit'] });
  if (result.error) fail(`could not run ${cmd}: ${result.error.message}`);
  if (result.status !== 0) fail(`${cmd} ${args.join(' ')} exited with status ${result.status}`);
}

/**
 * Files 0644, directories and executables 0755, whatever the umask or the source's modes were.
 * Native addons are loaded, never run, so they are 0644 too.
 */
function normaliseModes(path) {
  const stat = lstatSync(path);
  if (stat.isSymbolicLink()) return;
  if (stat.isDirectory()) {
    chmodSync(path, 0o755);
    for (const name of readdirSync(path)) normaliseModes(join(path, name));
  } else {
    chmodSync(path, stat.mode & 0o111 && !path.endsWith('.node') ? 0o755 : 0o644);
  }
}

/** Size in KiB of the files under `path`, for Installed-Size. */
function kibibytes(path) {
  const stat = lstatSync(path);
  if (!stat.isDirectory()) return Math.ceil(stat.size / 1024);
  return readdirSync(path).reduce((sum, name) => sum + kibibytes(join(path, name)), 1);
}

const { values } = parseArgs({
  options: {
    out: { type: 'string', default: join(root, 'build') },
    fast: { type: 'boolean', default: false },
  },
});
const out = resolve(values.out);
const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'));
const name = `ironroot_${pkg.version}_amd64`;
const stage = join(out, name);
const opt = join(stage, 'opt/ironroot');

rmSync(stage, { recursive: true, force: true });
mkdirSync(opt, { recursive: true });
for (const file of ['package.json', 'package-lock.json']) copyFileSync(join(root, file), join(opt, file));
for (const dir of ['bin', 'proto', 'firmware-profiles'])
  cpSync(join(root, dir), join(opt, dir), { recursive: true });

// Compiled straight into the stage, so the checkout's dist/ (which running tests load) is left alone.
run(
  process.execPath,
  [join(root, 'node_modules/typescript/bin/tsc'), '-p', 'tsconfig.build.json', '--outDir', join(opt, 'dist')],
  root,
);
// Exactly the locked production dependencies: the checkout's own install (`npm ci` of the same
// package-lock.json, which `npm run package:deb` brings up to date first) with the dev dependencies
// pruned. A fresh `npm ci --omit=dev` would give the same tree but compile the native addons again,
// most of a build's time.
const installed = join(root, 'node_modules', '.package-lock.json');
if (!existsSync(installed)) fail(`no npm install in ${root}: run npm ci (or npm run package:deb) first`);
const modules = join(root, 'node_modules');
// Not the tools' caches and stamps at its top (.vite, bootstrap's lock stamp): only npm's own.
const NPM_OWN = new Set(['.bin', '.package-lock.json']);
cpSync(modules, join(opt, 'node_modules'), {
  recursive: true,
  dereference: true,
  filter: (src) => dirname(src) !== modules || !basename(src).startsWith('.') || NPM_OWN.has(basename(src)),
});
run('npm', ['prune', '--omit=dev', '--offline', '--no-audit', '--no-fund'], opt);
// Scope folders whose every package was a dev dependency are left empty by prune.
for (const name of readdirSync(join(opt, 'node_modules'))) {
  const path = join(opt, 'node_modules', name);
  if (name.startsWith('@') && readdirSync(path).length === 0) rmSync(path, { recursive: true });
}

mkdirSync(join(stage, 'etc/ironroot/ek-ca'), { recursive: true });
for (const file of ['server.yaml', 'agent.yaml']) {
  copyFileSync(join(packaging, 'config', file), join(stage, 'etc/ironroot', file));
}
const units = join(stage, 'lib/systemd/system');
mkdirSync(units, { recursive: true });
for (const file of readdirSync(join(packaging, 'systemd')))
  copyFileSync(join(packaging, 'systemd', file), join(units, file));
mkdirSync(join(stage, 'usr/share/doc/ironroot'), { recursive: true });
copyFileSync(join(packaging, 'doc/copyright'), join(stage, 'usr/share/doc/ironroot/copyright'));
mkdirSync(join(stage, 'usr/bin'), { recursive: true });
for (const bin of Object.keys(pkg.bin))
  symlinkSync(`/opt/ironroot/${pkg.bin[bin]}`, join(stage, 'usr/bin', bin));
normaliseModes(stage);

const control = join(stage, 'DEBIAN');
mkdirSync(control);
writeFileSync(
  join(control, 'control'),
  [
    'Package: ironroot',
    `Version: ${pkg.version}`,
    'Architecture: amd64',
    'Maintainer: ironroot maintainers <ironroot@localhost>',
    `Installed-Size: ${kibibytes(stage)}`,
    `Depends: ${DEPENDS.join(', ')}`,
    `Suggests: ${SUGGESTS.join(', ')}`,
    'Section: admin',
    'Priority: optional',
    `Description: ${pkg.description.split(':')[0]}`,
    ' ironroot-server attests nodes by their TPM 2.0 and keeps its CA keys on a',
    ' PKCS#11 token; ironroot-agent serves SPIFFE X.509 and JWT SVIDs to workloads',
    ' over the SPIFFE Workload API.',
    ' Installed under /opt/ironroot; the systemd units are not enabled.',
    '',
  ].join('\n'),
);
writeFileSync(join(control, 'conffiles'), `${CONFFILES.join('\n')}\n`);
for (const script of ['postinst', 'prerm', 'postrm']) {
  copyFileSync(join(packaging, 'debian', script), join(control, script));
  chmodSync(join(control, script), 0o755);
}
chmodSync(control, 0o755);
for (const file of ['control', 'conffiles']) chmodSync(join(control, file), 0o644);

const deb = join(out, `${name}.deb`);
const compression = values.fast ? ['-Zgzip', '-z1'] : ['-Zxz'];
run('dpkg-deb', ['--root-owner-group', ...compression, '--build', stage, deb], root);
process.stdout.write(`${deb}\n`);
