#!/usr/bin/env node
// Builds the ironroot appliance image: a raw GPT disk that boots Debian's signed shim → grub → kernel
// with Secure Boot, runs ironroot-agent (or ironroot-server) from systemd, and is configured at boot
// from a small vfat partition labelled IRONROOT or the kernel command line (docs/appliance.md).
//
//   node scripts/build-image.mjs --variant agent|server [--out DIR] [--accel tcg|kvm]
//   (npm run image -- --variant agent)
//
// Standard output: ONE line of JSON, everything else goes to standard error:
//   {"image": "<abs>.raw",       the finished disk: p1 ESP at 1 MiB (/EFI/BOOT/BOOTX64.EFI = shim,
//                                 grubx64.efi, /EFI/debian/grub.cfg whose kernel line holds
//                                 console=ttyS0, the kernel and initrd), p2 the ext4 root
//    "profile": "<abs>.yaml",    firmware profile `ironroot-appliance-<variant>`, learnt by
//                                 `ironroot-server profile learn` from the event log below
//    "eventLog": "<abs>",        the guest's binary_bios_measurements from the image's first boot
//                                 (OVMF Secure Boot on, swtpm)
//    "manifest": "<abs>",        `dpkg-query -W` of the finished image (package, tab, version)
//    "inputsHash": "<hex>"}      sha256 of every input; an unchanged hash reuses the cached build
// The files are read-only (0444): boot the image with qemu's -snapshot or a qcow2 overlay.
//
// Steps: the .deb (scripts/build-deb.mjs) and this host's nodejs re-packed; a cached mmdebstrap root
// (Debian's packages only) with both installed; the root into ext4 and the boot chain onto the ESP
// without mounting anything (mkfs.ext4 -d, mtools, sgdisk); packer (packer/ironroot.pkr.hcl) boots it
// under OVMF with Secure Boot on and a swtpm vTPM and finishes it over SSH; the downloaded event log
// becomes the profile. Cache: /var/cache/ironroot-image/. Installs the Debian packages it needs
// (as root) like scripts/bootstrap.mjs does.
import { spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  chmodSync,
  copyFileSync,
  existsSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  renameSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { basename, dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { MIRROR, nodejsVersion, repackedNodejs, rootTarball, SUITE } from './lib/debroot.mjs';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const PACKER_DIR = join(root, 'packer');
const CACHE_DIR = '/var/cache/ironroot-image';

// What the image's root holds besides minbase (Debian's packages only; nodejs and ironroot come as
// files). tpm-udev makes /dev/tpmrm0 tss-owned; qemu-guest-agent is the hypervisor channel the
// end-to-end test runs commands through (it starts only where a virtio port named for it exists);
// openssh-server is for the build alone and purged at its end. The rest are ironroot's Depends, so
// the .deb installs without a mirror; python3 is a Depends of NodeSource's nodejs.
const ROOT_PACKAGES = [
  'systemd-sysv',
  'systemd',
  'udev',
  'dbus',
  'kmod',
  'procps',
  'iproute2',
  'linux-image-amd64',
  'shim-signed',
  'grub-efi-amd64-signed',
  'initramfs-tools',
  'tpm-udev',
  'tpm2-tools',
  'qemu-guest-agent',
  'ca-certificates',
  'dosfstools',
  'openssh-server',
  'adduser',
  'libtss2-tctildr0',
  'libtss2-tcti-device0',
  'python3',
];

// What this script runs on the host.
const HOST_PACKAGES = [
  'packer',
  'mmdebstrap',
  'dpkg-repack',
  'e2fsprogs',
  'dosfstools',
  'mtools',
  'gdisk',
  'ovmf',
  'qemu-system-x86',
  'qemu-utils',
  'swtpm',
  'openssh-client',
];

// Timestamps of the root (and its initrd, which grub measures): fixed, so the same packages give
// the same image measurements on any machine.
const SOURCE_DATE_EPOCH = 1767225600;

const OVMF_CODE = '/usr/share/OVMF/OVMF_CODE_4M.secboot.fd';
const OVMF_VARS = '/usr/share/OVMF/OVMF_VARS_4M.ms.fd';

// Fixed identifiers: OVMF measures the GPT (PCR 5), and fixed ones keep rebuilds comparable.
const DISK_GUID = '1e0b0071-0000-4000-8000-0000000000a1';
const ESP_GUID = '1e0b0071-0000-4000-8000-0000000000a2';
const ROOT_PARTUUID = '1e0b0071-0000-4000-8000-0000000000a3';
const ROOT_FS_UUID = '1e0b0071-0000-4000-8000-0000000000a4';
const ESP_VOLUME_ID = '1e0b0072';
const MIB = 1024 * 1024;
// console=ttyS0 last: it becomes /dev/console, where journald forwards the units' logs.
const KERNEL_CMDLINE = `root=UUID=${ROOT_FS_UUID} ro console=tty0 console=ttyS0,115200 quiet`;

function log(message) {
  process.stderr.write(`build-image: ${message}\n`);
}

/** A build step that failed; main() reports it after removing the work directory. */
class ImageBuildError extends Error {
  code = 'ERR_IMAGE_BUILD';
}

function fail(message) {
  throw new ImageBuildError(message);
}

/** Runs a command to completion with its output on standard error; returns its standard output. */
function run(cmd, args, options = {}) {
  const result = spawnSync(cmd, args, {
    stdio: ['ignore', options.capture ? 'pipe' : process.stderr, 'inherit'],
    encoding: 'utf8',
    maxBuffer: 256 * MIB,
    ...options,
  });
  if (result.error) fail(`could not run ${cmd}: ${result.error.message}`);
  if (result.status !== 0) fail(`${cmd} ${args.join(' ')} exited with status ${result.status}`);
  return result.stdout ?? '';
}

function installHostPackages() {
  // biome-ignore lint/suspicious/noTemplateCurlyInString: dpkg-query's own format syntax
  const query = spawnSync('dpkg-query', ['-W', '-f', '${Package} ${db:Status-Status}\\n', ...HOST_PACKAGES], {
    encoding: 'utf8',
  });
  if (query.error) fail('dpkg-query not found: the image is built on Debian 12');
  const installed = new Set(
    query.stdout
      .split('\n')
      .filter((line) => line.endsWith(' installed'))
      .map((line) => line.split(' ')[0]),
  );
  const missing = HOST_PACKAGES.filter((name) => !installed.has(name));
  if (missing.length === 0) return;
  if (process.getuid?.() !== 0) fail(`missing Debian packages: ${missing.join(' ')} (run as root)`);
  log(`installing Debian packages: ${missing.join(' ')}`);
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  run('apt-get', ['update', '-qq'], { env });
  run('apt-get', ['install', '-y', '-qq', '--no-install-recommends', ...missing], { env });
}

/** sha256 over a tree's paths, modes, link targets and contents, in a fixed order. */
function hashTree(hash, dir, base = dir) {
  for (const name of readdirSync(dir).sort()) {
    const path = join(dir, name);
    const stat = lstatSync(path);
    hash.update(`${relative(base, path)}\0${stat.mode}\0`);
    if (stat.isSymbolicLink()) hash.update(readlinkSync(path));
    else if (stat.isDirectory()) hashTree(hash, path, base);
    else hash.update(readFileSync(path));
    hash.update('\0');
  }
}

function sha256File(path) {
  return createHash('sha256').update(readFileSync(path)).digest('hex');
}

/** The .deb, built fresh; its content (not the archive, whose timestamps vary) goes into the hash. */
function buildDeb(work) {
  log('building the ironroot .deb');
  const out = join(work, 'deb');
  const deb = run(process.execPath, [join(root, 'scripts/build-deb.mjs'), '--out', out, '--fast'], {
    capture: true,
  }).trim();
  const stage = deb.replace(/\.deb$/, '');
  const hash = createHash('sha256');
  hashTree(hash, stage);
  return { deb, stage, contentHash: hash.digest('hex') };
}

function inputsHash(variant, debHash, nodejs, packerDir) {
  const hash = createHash('sha256');
  hash.update(
    JSON.stringify({
      variant,
      debHash,
      nodejs,
      ROOT_PACKAGES,
      SUITE,
      MIRROR,
      KERNEL_CMDLINE,
      SOURCE_DATE_EPOCH,
    }),
  );
  hashTree(hash, packerDir);
  for (const file of ['scripts/build-image.mjs', 'scripts/lib/debroot.mjs']) {
    hash.update(readFileSync(join(root, file)));
  }
  for (const file of [OVMF_CODE, OVMF_VARS]) hash.update(sha256File(file));
  return hash.digest('hex');
}

/** The root: the cached mmdebstrap tarball extracted, nodejs and ironroot installed, the overlay in. */
function makeRoot(work, packerDir, tarball, debs, publicKey) {
  const dir = join(work, 'root');
  mkdirSync(dir);
  log('extracting the root');
  run('tar', ['-C', dir, '--numeric-owner', '-xpf', tarball]);
  const incoming = join(dir, 'tmp/ironroot-debs');
  mkdirSync(incoming);
  const inside = debs.map((deb) => {
    copyFileSync(deb, join(incoming, basename(deb)));
    return `/tmp/ironroot-debs/${basename(deb)}`;
  });
  log('installing nodejs and ironroot into the root');
  run('chroot', [dir, 'dpkg', '-i', ...inside], {
    env: { PATH: '/usr/sbin:/usr/bin:/sbin:/bin', LANG: 'C.UTF-8', DEBIAN_FRONTEND: 'noninteractive' },
  });
  rmSync(incoming, { recursive: true });
  run('cp', ['-a', `${join(packerDir, 'files/root')}/.`, dir]);
  writeFileSync(join(dir, 'etc/fstab'), `UUID=${ROOT_FS_UUID} / ext4 errors=remount-ro 0 1\n`);
  writeFileSync(join(dir, 'etc/hostname'), 'ironroot\n');
  writeFileSync(join(dir, 'etc/hosts'), '127.0.0.1\tlocalhost\n127.0.1.1\tironroot\n::1\tlocalhost\n');
  run('chroot', [dir, 'systemctl', 'enable', 'systemd-networkd.service'], {
    env: { PATH: '/usr/sbin:/usr/bin:/sbin:/bin', LANG: 'C.UTF-8' },
  });
  // The build's key, removed again by the last provisioner (packer/files/guest/finish.sh).
  mkdirSync(join(dir, 'root/.ssh'), { recursive: true });
  chmodSync(join(dir, 'root/.ssh'), 0o700);
  writeFileSync(join(dir, 'root/.ssh/authorized_keys'), publicKey, { mode: 0o600 });
  return dir;
}

function only(dir, prefix) {
  const found = readdirSync(dir).filter((name) => name.startsWith(prefix));
  if (found.length !== 1) fail(`expected one ${prefix}* in ${dir}, found ${found.join(', ') || 'none'}`);
  return join(dir, found[0]);
}

/** The EFI System Partition: shim as the removable-media loader, grub beside it, the kernel and initrd. */
function makeEsp(work, rootDir) {
  const grubCfg = join(work, 'grub.cfg');
  // linuxefi/initrdefi: Debian's grub hands the kernel to its EFI stub (which passes on the firmware's
  // event log) with Secure Boot off too, where plain `linux` skips the stub and the log is lost.
  writeFileSync(
    grubCfg,
    ['set timeout=0', `linuxefi /vmlinuz ${KERNEL_CMDLINE}`, 'initrdefi /initrd.img', 'boot', ''].join('\n'),
  );
  const content = [
    [join(rootDir, 'usr/lib/shim/shimx64.efi.signed'), '::/EFI/BOOT/BOOTX64.EFI'],
    [join(rootDir, 'usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed'), '::/EFI/BOOT/grubx64.efi'],
    [grubCfg, '::/EFI/debian/grub.cfg'],
    [only(join(rootDir, 'boot'), 'vmlinuz-'), '::/vmlinuz'],
    [only(join(rootDir, 'boot'), 'initrd.img-'), '::/initrd.img'],
  ];
  const bytes = content.reduce((sum, [file]) => sum + statSync(file).size, 0);
  const mib = Math.max(128, Math.ceil(bytes / MIB) * 2);
  const esp = join(work, 'esp.img');
  run('mkfs.vfat', ['-C', '-i', ESP_VOLUME_ID, '-n', 'ESP', esp, String(mib * 1024)]);
  run('mmd', ['-i', esp, '::/EFI', '::/EFI/BOOT', '::/EFI/debian']);
  for (const [file, target] of content) run('mcopy', ['-i', esp, file, target]);
  return { esp, mib };
}

/** The ext4 root filled from the directory (mkfs.ext4 -d keeps owners and modes); no mount. */
function makeRootFs(work, rootDir) {
  const used = Number(run('du', ['-sxm', rootDir], { capture: true }).split('\t')[0]);
  const mib = Math.ceil((used * 1.3 + 512) / 64) * 64;
  const img = join(work, 'root.img');
  run('mkfs.ext4', [
    '-q',
    ...['-d', rootDir, '-U', ROOT_FS_UUID, '-L', 'ironroot-root'],
    ...['-E', `hash_seed=${ROOT_FS_UUID}`],
    img,
    `${mib}M`,
  ]);
  return { img, mib };
}

function makeDisk(work, esp, rootFs) {
  const disk = join(work, 'disk.raw');
  const espStart = 1;
  const rootStart = espStart + esp.mib;
  // 1 MiB after the root for the backup GPT.
  const total = rootStart + rootFs.mib + 1;
  run('truncate', ['-s', `${total}M`, disk]);
  run('sgdisk', [
    ...['-U', DISK_GUID],
    ...[
      '-n',
      `1:${espStart}M:+${esp.mib}M`,
      '-t',
      '1:ef00',
      '-u',
      `1:${ESP_GUID}`,
      '-c',
      '1:EFI System Partition',
    ],
    ...[
      '-n',
      `2:${rootStart}M:+${rootFs.mib}M`,
      '-t',
      '2:8304',
      '-u',
      `2:${ROOT_PARTUUID}`,
      '-c',
      '2:ironroot root',
    ],
    disk,
  ]);
  for (const [img, start] of [
    [esp.esp, espStart],
    [rootFs.img, rootStart],
  ]) {
    run('dd', [`if=${img}`, `of=${disk}`, 'bs=1M', `seek=${start}`, 'conv=notrunc,sparse', 'status=none']);
  }
  return disk;
}

async function waitForFile(path, child, ms) {
  const deadline = Date.now() + ms;
  while (!existsSync(path)) {
    if (child.exitCode !== null) fail(`swtpm exited with ${child.exitCode} before creating ${path}`);
    if (Date.now() > deadline) fail(`swtpm did not create ${path} within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** packer: boots the disk under OVMF Secure Boot with a fresh swtpm and provisions it. */
async function runPacker(work, packerDir, variant, disk, keyFile, accel) {
  const tpmDir = join(work, 'tpm');
  mkdirSync(tpmDir);
  const socket = join(tpmDir, 'swtpm.sock');
  const swtpm = spawn(
    'swtpm',
    [
      'socket',
      '--tpm2',
      '--tpmstate',
      `dir=${tpmDir}`,
      '--ctrl',
      `type=unixio,path=${socket}`,
      '--terminate',
    ],
    { stdio: ['ignore', 'ignore', process.stderr] },
  );
  try {
    await waitForFile(socket, swtpm, 10_000);
    const vars = join(work, 'OVMF_VARS.fd');
    copyFileSync(OVMF_VARS, vars);
    const downloads = join(work, 'downloads');
    mkdirSync(downloads);
    const serial = join(work, 'serial.log');
    const output = join(work, 'packer-output');
    const vars_ = {
      variant,
      disk_image: disk,
      output_directory: output,
      ssh_private_key_file: keyFile,
      swtpm_socket: socket,
      ovmf_code: OVMF_CODE,
      ovmf_vars: vars,
      serial_log: serial,
      download_directory: downloads,
      accelerator: accel,
    };
    log(`packer: booting under OVMF (Secure Boot on, ${accel}); the guest console goes to ${serial}`);
    const code = await new Promise((resolvePromise, reject) => {
      const child = spawn(
        'packer',
        [
          'build',
          '-color=false',
          ...Object.entries(vars_).flatMap(([k, v]) => ['-var', `${k}=${v}`]),
          join(packerDir, 'ironroot.pkr.hcl'),
        ],
        {
          cwd: work,
          env: { ...process.env, CHECKPOINT_DISABLE: '1' },
          stdio: ['ignore', process.stderr, process.stderr],
        },
      );
      child.on('error', reject);
      child.on('exit', resolvePromise);
    });
    if (code !== 0) {
      const tail = existsSync(serial) ? readFileSync(serial, 'latin1').slice(-4000) : '(no serial log)';
      fail(`packer build exited with ${code}; guest console tail:\n${tail}`);
    }
    return {
      image: join(output, `ironroot-appliance-${variant}.raw`),
      eventLog: join(downloads, 'binary_bios_measurements'),
      manifest: join(downloads, 'manifest.txt'),
    };
  } finally {
    if (swtpm.exitCode === null) swtpm.kill('SIGKILL');
  }
}

/** Learns the profile with the product's own learner from the packaged build. */
function learnProfile(stage, variant, dir, packages) {
  const name = `ironroot-appliance-${variant}`;
  const out = join(dir, `${name}.yaml`);
  // Run in the log's directory, so the learner's comment names the file and not this build's path.
  run(
    process.execPath,
    [
      join(stage, 'opt/ironroot/bin/ironroot-server.js'),
      ...['profile', 'learn', '--eventlog', 'binary_bios_measurements', '--name', name, '--out', out],
      ...[
        '--description',
        `the ironroot appliance image (${variant}), Secure Boot on; learnt from its first boot`,
      ],
    ],
    { cwd: dir },
  );
  // Which packages the boot chain came from, so a reader knows what the profile matches.
  const versions = packages
    .split('\n')
    .map((line) => line.replace(/:amd64\t/, '\t'))
    .filter((line) => /^(shim-signed|grub-efi-amd64-signed|linux-image-[0-9][^\t]*-amd64)\t/.test(line))
    .map((line) => line.replace('\t', ' '));
  // biome-ignore lint/suspicious/noTemplateCurlyInString: dpkg-query's own format syntax
  const ovmf = run('dpkg-query', ['-W', '-f', '${Version}', 'ovmf'], { capture: true });
  const header = [
    `# Firmware profile of the ironroot appliance image (${variant}), learnt by scripts/build-image.mjs`,
    `# from the image's first boot under OVMF (${basename(OVMF_CODE)}, Microsoft keys) with Secure Boot on.`,
    `# It matches only an image built from the same packages: ${versions.join(', ')}; ovmf ${ovmf}.`,
  ];
  writeFileSync(out, `${header.join('\n')}\n${readFileSync(out, 'utf8')}`);
}

/** Says whether a learnt profile equals the one shipped in firmware-profiles/ (comments aside). */
function compareWithShipped(variant, learnt) {
  const name = `ironroot-appliance-${variant}`;
  const shipped = join(root, 'firmware-profiles', `${name}.yaml`);
  const strip = (text) =>
    text
      .split('\n')
      .filter((line) => !line.startsWith('#'))
      .join('\n');
  if (!existsSync(shipped)) log(`no shipped profile ${relative(root, shipped)} to compare with`);
  else if (strip(readFileSync(shipped, 'utf8')) === strip(readFileSync(learnt, 'utf8')))
    log(`the learnt profile equals the shipped ${relative(root, shipped)}`);
  else log(`the learnt profile DIFFERS from the shipped ${relative(root, shipped)} (packages changed?)`);
}

function result(dir, variant, hash) {
  return {
    image: join(dir, `ironroot-appliance-${variant}.raw`),
    profile: join(dir, `ironroot-appliance-${variant}.yaml`),
    eventLog: join(dir, 'binary_bios_measurements'),
    manifest: join(dir, 'manifest.txt'),
    inputsHash: hash,
  };
}

function copyOut(from, out, variant, hash) {
  mkdirSync(out, { recursive: true });
  const target = result(out, variant, hash);
  for (const key of ['image', 'profile', 'eventLog', 'manifest']) {
    rmSync(target[key], { force: true });
    run('cp', ['--sparse=always', '--reflink=auto', from[key], target[key]]);
    chmodSync(target[key], 0o444);
  }
  return target;
}

async function main() {
  const { values } = parseArgs({
    options: {
      variant: { type: 'string' },
      out: { type: 'string' },
      accel: { type: 'string', default: 'tcg' },
    },
  });
  const variant = values.variant;
  if (variant !== 'agent' && variant !== 'server') fail('--variant agent or --variant server is required');
  if (values.accel !== 'tcg' && values.accel !== 'kvm') fail('--accel must be tcg or kvm');
  if (process.getuid?.() !== 0) fail('building the image needs root (mmdebstrap --mode=root, chroot)');
  installHostPackages();
  mkdirSync(CACHE_DIR, { recursive: true, mode: 0o700 });

  const work = mkdtempSync(join('/var/tmp', 'ironroot-image-'));
  try {
    // A copy, so what is hashed is what is built even if the checkout changes meanwhile.
    const packerDir = join(work, 'packer');
    run('cp', ['-a', PACKER_DIR, packerDir]);
    const { deb, stage, contentHash } = buildDeb(work);
    const nodejs = await nodejsVersion();
    const hash = inputsHash(variant, contentHash, nodejs, packerDir);
    const entry = join(CACHE_DIR, `${variant}-${hash.slice(0, 16)}`);
    const cached = result(entry, variant, hash);
    if (Object.values(cached).every((p) => p === hash || existsSync(p))) {
      log(`inputs unchanged (${hash.slice(0, 16)}): reusing ${entry}`);
    } else {
      log(`inputs ${hash.slice(0, 16)}: building`);
      const [tarball, nodeDeb] = await Promise.all([
        rootTarball(ROOT_PACKAGES, CACHE_DIR, { sourceDateEpoch: SOURCE_DATE_EPOCH }),
        repackedNodejs(CACHE_DIR),
      ]);
      const keyFile = join(work, 'build-key');
      run('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', 'ironroot-image-build', '-f', keyFile]);
      const rootDir = makeRoot(work, packerDir, tarball, [nodeDeb, deb], readFileSync(`${keyFile}.pub`));
      const esp = makeEsp(work, rootDir);
      const rootFs = makeRootFs(work, rootDir);
      run('rm', ['-rf', '--one-file-system', rootDir]);
      const disk = makeDisk(work, esp, rootFs);
      rmSync(esp.esp);
      rmSync(rootFs.img);
      const built = await runPacker(work, packerDir, variant, disk, keyFile, values.accel);
      rmSync(disk);
      const partial = `${entry}.partial-${process.pid}`;
      mkdirSync(partial);
      try {
        const final = result(partial, variant, hash);
        renameSync(built.image, final.image);
        // packer copies the disk byte for byte; the root's unused blocks are zeros and need no space.
        run('fallocate', ['--dig-holes', final.image]);
        copyFileSync(built.eventLog, final.eventLog);
        copyFileSync(built.manifest, final.manifest);
        learnProfile(stage, variant, partial, readFileSync(final.manifest, 'utf8'));
        for (const key of ['image', 'profile', 'eventLog', 'manifest']) chmodSync(final[key], 0o444);
        rmSync(entry, { recursive: true, force: true });
        renameSync(partial, entry);
      } finally {
        rmSync(partial, { recursive: true, force: true });
      }
    }
    compareWithShipped(variant, cached.profile);
    const printed = values.out === undefined ? cached : copyOut(cached, resolve(values.out), variant, hash);
    process.stdout.write(`${JSON.stringify(printed)}\n`);
  } finally {
    run('rm', ['-rf', '--one-file-system', work]);
  }
}

try {
  await main();
} catch (error) {
  log(`error: ${error instanceof ImageBuildError ? error.message : error?.stack}`);
  process.exitCode = 1;
}
