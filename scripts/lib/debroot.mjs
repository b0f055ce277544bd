// Debian roots made from Debian's packages, shared by the appliance image build
// (scripts/build-image.mjs) and the packaging tests (test/helpers/debroot.ts).
//
// rootTarball: `mmdebstrap --mode=root` (minbase plus the packages given) kept as a tarball in a cache
// directory, keyed by everything that shapes it, so only the first run needs the mirror. The .debs it
// downloads are kept beside it, so a rebuild with another package list fetches only what is new.
// repackedNodejs: Debian 12's nodejs is 18, older than the package needs (>= 20.19), and only Debian's
// mirror is reachable, so a root gets this host's nodejs (NodeSource's) re-packed by `dpkg-repack`.
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, renameSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

export const SUITE = 'bookworm';
export const MIRROR = 'http://deb.debian.org/debian';

/**
 * Path of a cached root tarball in `cacheDir` holding minbase and `packages`; made when missing.
 * `sourceDateEpoch` makes the root reproducible from the same packages (mmdebstrap's timestamps,
 * and the initrd mkinitramfs makes, whose digest a firmware profile holds).
 */
export async function rootTarball(packages, cacheDir, options = {}) {
  const sorted = [...new Set(packages)].sort();
  const epoch = options.sourceDateEpoch;
  const key = createHash('sha256')
    .update(JSON.stringify([SUITE, 'minbase', MIRROR, sorted, ...(epoch === undefined ? [] : [epoch])]))
    .digest('hex')
    .slice(0, 16);
  const tarball = join(cacheDir, `${SUITE}-minbase-${key}.tar`);
  if (existsSync(tarball)) return tarball;
  const debs = join(cacheDir, 'debs');
  mkdirSync(debs, { recursive: true, mode: 0o700 });
  // mmdebstrap picks the output format by the name's ending, so the partial file ends in .tar too.
  const partial = join(cacheDir, `partial-${process.pid}-${SUITE}-minbase-${key}.tar`);
  try {
    await run(
      'mmdebstrap',
      [
        '--mode=root',
        '--variant=minbase',
        `--include=${sorted.join(',')}`,
        // The package cache goes in before apt downloads and comes back out after, emptied from the root.
        '--skip=download/empty',
        '--setup-hook=mkdir -p "$1"/var/cache/apt/archives/',
        `--setup-hook=sync-in ${debs} /var/cache/apt/archives/`,
        `--customize-hook=sync-out /var/cache/apt/archives ${debs}`,
        SUITE,
        partial,
        MIRROR,
      ],
      {
        maxBuffer: 64 * 1024 * 1024,
        env: epoch === undefined ? process.env : { ...process.env, SOURCE_DATE_EPOCH: String(epoch) },
      },
    );
    renameSync(partial, tarball);
  } finally {
    rmSync(partial, { force: true });
  }
  return tarball;
}

/** This host's nodejs version, as dpkg knows it. */
export async function nodejsVersion() {
  // biome-ignore lint/suspicious/noTemplateCurlyInString: dpkg-query's own format syntax
  const { stdout } = await run('dpkg-query', ['-W', '-f', '${Version}', 'nodejs']);
  return stdout;
}

/** Path of this host's nodejs package re-packed by dpkg-repack, cached in `cacheDir`; made when missing. */
export async function repackedNodejs(cacheDir) {
  const version = await nodejsVersion();
  const dir = join(cacheDir, `nodejs-${version.replace(/[^A-Za-z0-9.+~-]/g, '_')}`);
  const deb = () => readdirSync(dir).find((name) => name.endsWith('.deb'));
  if (existsSync(dir)) {
    const found = deb();
    if (found !== undefined) return join(dir, found);
  }
  mkdirSync(cacheDir, { recursive: true, mode: 0o700 });
  const partial = mkdtempSync(join(cacheDir, 'nodejs-partial-'));
  try {
    await run('dpkg-repack', ['nodejs'], { cwd: partial, maxBuffer: 64 * 1024 * 1024 });
    rmSync(dir, { recursive: true, force: true });
    renameSync(partial, dir);
  } finally {
    rmSync(partial, { recursive: true, force: true });
  }
  const found = deb();
  if (found === undefined) throw new Error(`dpkg-repack nodejs left no .deb in ${dir}`);
  return join(dir, found);
}
