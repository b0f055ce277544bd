#!/usr/bin/env node
// Dependency-free first step of `npm test`, `npm run demo` and `npm run build`: it installs what is
// missing (Debian packages, then npm dependencies) so a fresh clone needs no manual step. It runs
// before node_modules exists, so it may use only Node's standard library.
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');

// Debian packages the demo and the tests start for real. Keep in step with the README.
// ovmf, qemu-system-x86, linux-image-amd64, busybox-static and cpio boot real UEFI firmware with a
// swtpm vTPM for the measured-boot tests (test/helpers/qemu.ts); shim-signed, grub-efi-amd64-signed,
// dosfstools, mtools and gdisk put Debian's signed boot chain on a GPT disk for its Secure Boot mode.
// postgresql runs the HA datastore's tests against a throw-away cluster (test/helpers/postgres.ts).
// libtpm2-pkcs11-1, libtpm2-pkcs11-tools, tpm2-abrmd and libtss2-tcti-tabrmd0 are a second PKCS#11
// module (a TPM as the CA key store) the key manager is tested on besides SoftHSM2
// (test/helpers/tpm2-pkcs11.ts). mmdebstrap, dpkg-repack and systemd (systemd-analyze) install the
// .deb into a throw-away Debian root and check its units (test/packaging/deb.test.ts). packer reads
// the appliance image's template (test/appliance/packer-template.test.ts, scripts/build-image.mjs).
// strace shows the order of the agent's fsync and rename calls (test/agent/store.test.ts).
const APT_PACKAGES = [
  'swtpm',
  'swtpm-tools',
  'softhsm2',
  'tpm2-tools',
  'libtss2-dev',
  'opensc',
  'openssl',
  'ovmf',
  'qemu-system-x86',
  'linux-image-amd64',
  'busybox-static',
  'cpio',
  'shim-signed',
  'grub-efi-amd64-signed',
  'dosfstools',
  'mtools',
  'gdisk',
  'postgresql',
  'libtpm2-pkcs11-1',
  'libtpm2-pkcs11-tools',
  'tpm2-abrmd',
  'libtss2-tcti-tabrmd0',
  'mmdebstrap',
  'dpkg-repack',
  'systemd',
  'packer',
  'strace',
];

const MIN_NODE = [20, 19];

function fail(message) {
  process.stderr.write(`bootstrap: ${message}\n`);
  process.exit(1);
}

function run(cmd, args, options = {}) {
  const result = spawnSync(cmd, args, { stdio: 'inherit', cwd: root, ...options });
  if (result.error) fail(`could not run ${cmd}: ${result.error.message}`);
  if (result.status !== 0) fail(`${cmd} ${args.join(' ')} exited with status ${result.status}`);
}

function checkNode() {
  const [major, minor] = process.versions.node.split('.').map(Number);
  if (major < MIN_NODE[0] || (major === MIN_NODE[0] && minor < MIN_NODE[1])) {
    fail(`Node ${MIN_NODE.join('.')} or newer is required, this is ${process.versions.node}`);
  }
}

function missingAptPackages() {
  // biome-ignore lint/suspicious/noTemplateCurlyInString: dpkg-query's own format syntax
  const result = spawnSync('dpkg-query', ['-W', '-f', '${Package} ${db:Status-Status}\\n', ...APT_PACKAGES], {
    encoding: 'utf8',
  });
  if (result.error) fail('dpkg-query not found: ironroot is set up on Debian or a derivative');
  const installed = new Set(
    result.stdout
      .split('\n')
      .filter((line) => line.endsWith(' installed'))
      .map((line) => line.split(' ')[0]),
  );
  return APT_PACKAGES.filter((name) => !installed.has(name));
}

function installAptPackages() {
  const missing = missingAptPackages();
  if (missing.length === 0) return;
  if (process.getuid?.() !== 0) {
    fail(
      `missing Debian packages: ${missing.join(' ')}. Run as root, or: sudo apt-get install -y ${missing.join(' ')}`,
    );
  }
  process.stderr.write(`bootstrap: installing Debian packages: ${missing.join(' ')}\n`);
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  run('apt-get', ['update', '-qq'], { env });
  run('apt-get', ['install', '-y', '-qq', '--no-install-recommends', ...missing], { env });
}

// npm ci only when the lock file changed since the last successful install, so a warm run is fast.
function installNpmDependencies() {
  const lock = readFileSync(join(root, 'package-lock.json'));
  const digest = createHash('sha256').update(lock).digest('hex');
  const stamp = join(root, 'node_modules', '.ironroot-lock-sha256');
  if (existsSync(stamp) && readFileSync(stamp, 'utf8') === digest) return;
  process.stderr.write('bootstrap: installing npm dependencies (npm ci)\n');
  run('npm', ['ci', '--no-audit', '--no-fund']);
  writeFileSync(stamp, digest);
}

checkNode();
if (!process.argv.includes('--npm-only')) installAptPackages();
installNpmDependencies();
