/**
 * Reading a caller's `/proc/<pid>` files on the Workload API's first-response path.
 *
 * The kernel renders these files from memory, so they are read synchronously (a thread-pool round
 * trip would cost more than the read). They are read with plain open/read/close into one reused
 * buffer: `readFileSync` adds an fstat (always 0 bytes for /proc) and option handling, which on
 * a path taken several times per call was measurable (docs/performance.md).
 *
 * @module
 */
import { closeSync, openSync, readSync } from 'node:fs';
import { join } from 'node:path';

/** One buffer for every read: reads are synchronous, so no two ever share it at once. */
let buffer = Buffer.allocUnsafe(16 * 1024);

/** Reads from `fd` at offset 0 to end of file, growing the shared buffer if the file outgrows it. */
function readAll(fd: number): string {
  let length = 0;
  for (;;) {
    if (length === buffer.length) {
      const larger = Buffer.allocUnsafe(buffer.length * 2);
      buffer.copy(larger, 0, 0, length);
      buffer = larger;
    }
    const n = readSync(fd, buffer, length, buffer.length - length, length);
    if (n === 0) break;
    length += n;
  }
  // UTF-8, as readFileSync(path, 'utf8') decoded it: /proc text is ASCII apart from names a process
  // chose (comm, cgroup paths), which selectors carry as the workload wrote them.
  return buffer.toString('utf8', 0, length);
}

/**
 * The whole text of a /proc file.
 *
 * @throws the `open`/`read` error (`ENOENT`, `ESRCH` once the process is gone).
 */
export function readProcFile(path: string): string {
  const fd = openSync(path, 'r');
  try {
    return readAll(fd);
  } finally {
    closeSync(fd);
  }
}

/** Field 22 of a `/proc/<pid>/stat` text (start time in clock ticks since boot). */
function startTimeOf(stat: string): string | undefined {
  // Field 2 (comm) is in parentheses and may itself hold spaces and ')': split after the last ')'.
  // rest[0] is field 3 (state), so field 22 is rest[19].
  return stat
    .slice(stat.lastIndexOf(')') + 2)
    .split(' ', 20)
    .at(19);
}

/**
 * A process held by an open `/proc/<pid>/stat`, from the moment its connection is accepted.
 *
 * A pid names a process only while it lives; once it exits the kernel may give the number to
 * another. An open /proc file stays bound to the process it was opened for: reads through it fail
 * (`ESRCH`) once that process is gone, whoever has its pid by then. So a read through the pin after
 * the attestors' reads of `/proc/<pid>/…` proves they described the process that connected. The
 * start time read at pin time is compared as well, which also holds where `/proc` is not procfs.
 */
export class PinnedProcess {
  readonly #fd: number;
  /** Field 22 of `/proc/<pid>/stat` when pinned. */
  readonly startTime: string;
  #closed = false;

  private constructor(fd: number, startTime: string) {
    this.#fd = fd;
    this.startTime = startTime;
  }

  /** Pins `pid`, or returns undefined when no such process is visible under `procRoot`. */
  static open(procRoot: string, pid: number): PinnedProcess | undefined {
    let fd: number;
    try {
      fd = openSync(join(procRoot, String(pid), 'stat'), 'r');
    } catch {
      return undefined;
    }
    let startTime: string | undefined;
    try {
      startTime = startTimeOf(readAll(fd));
    } catch {
      startTime = undefined;
    }
    if (startTime === undefined) {
      closeSync(fd);
      return undefined;
    }
    return new PinnedProcess(fd, startTime);
  }

  /** True while the pinned process lives with the start time it had when pinned. */
  isSame(): boolean {
    if (this.#closed) return false;
    try {
      return startTimeOf(readAll(this.#fd)) === this.startTime;
    } catch {
      return false;
    }
  }

  /** Lets the descriptor go (when the connection closes). Later {@link isSame} calls answer false. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    closeSync(this.#fd);
  }
}
