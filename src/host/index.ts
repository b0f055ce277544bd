/**
 * What both executables need from the host: an exclusive lock on a data directory, Unix socket
 * paths claimed only when stale, directories with exact modes, and listen errors named by key.
 *
 * @module
 */
export { bindAddress } from './address.js';
export { checkDirUsable, closedToOthers, ensureDir } from './dirs.js';
export { HostError, type HostErrorCode } from './errors.js';
export { checkDirUnlocked, type DirLock, type LockOptions, lockDir, lockFilePath } from './lock.js';
export { checkSocketPath, claimSocketPath } from './socket.js';
