import { chmodSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/**
 * vitest global setup: every test's temporary files go under one directory for the run (TMPDIR,
 * which os.tmpdir() and the tools the tests start read), removed when the run ends. Tests make their
 * directories under os.tmpdir(), and not every test removes them (a failed one cannot): each run left
 * about 650 in /tmp, SoftHSM tokens and datastores among them.
 */
export default function setup(): () => void {
  const dir = mkdtempSync(join(tmpdir(), 'ironroot-test-run-'));
  // Workloads run as other uids reach the sockets and files tests open to them below this.
  chmodSync(dir, 0o711);
  process.env.TMPDIR = dir;
  return () => rmSync(dir, { recursive: true, force: true });
}
