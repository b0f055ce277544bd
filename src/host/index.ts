/**
 * What both executables need from the host: an exclusive lock on a data directory, Unix socket
 * paths claimed only when stale, directories with exact modes, and listen errors named by key; the
 * `--output` flag both command lines share, and how they report a failed command
 * (`Error (ERR_CODE): …`); the logger both build (`log_format`) and URLs as it shows them (query
 * withheld); and handing freed C-heap memory back to the kernel.
 *
 * @module
 */
export { bindAddress, splitHostPort } from './address.js';
export {
  CliError,
  errorCodeOf,
  formatCliError,
  reportCliError,
  runCli,
  UNCODED_ERROR,
} from './cli-errors.js';
export { checkDirUsable, closedToOthers, ensureDir } from './dirs.js';
export { HostError, type HostErrorCode } from './errors.js';
export { checkDirUnlocked, type DirLock, type LockOptions, lockDir, lockFilePath } from './lock.js';
export {
  createLogger,
  LOG_FORMATS,
  LOG_LEVELS,
  type LogFormat,
  type Logger,
  type LogOptions,
} from './log.js';
export { releaseFreedMemory } from './memory.js';
export { type OutputFormat, withOutput } from './output.js';
export { printableUrl } from './printable-url.js';
export { checkSocketPath, claimSocketPath } from './socket.js';
