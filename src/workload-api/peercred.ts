/**
 * The kernel's word on who is at the other end of a Unix socket: SO_PEERCRED read from the accepted
 * socket's file descriptor (Node's `net` does not expose it). What guards against PID reuse is in
 * procfs.ts.
 *
 * @module
 */
import type { Socket } from 'node:net';
import koffi from 'koffi';
import { WorkloadApiError } from './errors.js';
import type { CallerCredentials } from './provider.js';

const SOL_SOCKET = 1;
const SO_PEERCRED = 17;

interface Libc {
  getsockopt: (fd: number, level: number, name: number, out: Record<string, number>, len: number[]) => number;
}
let libc: Libc | undefined;

function loadLibc(): Libc {
  if (libc === undefined) {
    const lib = koffi.load('libc.so.6');
    // struct ucred from <sys/socket.h>: pid_t, uid_t, gid_t. Anonymous, so that loading this module
    // twice in one process (src and dist) does not register a type name twice.
    const ucred = koffi.struct({ pid: 'int32', uid: 'uint32', gid: 'uint32' });
    libc = {
      getsockopt: lib.func('getsockopt', 'int', [
        'int',
        'int',
        'int',
        koffi.out(koffi.pointer(ucred)),
        koffi.inout(koffi.pointer('uint32')),
      ]),
    };
  }
  return libc;
}

/** The fd behind a socket accepted by `net.Server` (libuv's pipe handle exposes it on Linux). */
function socketFd(socket: Socket): number {
  const handle: unknown = Reflect.get(socket, '_handle');
  const fd: unknown = typeof handle === 'object' && handle !== null ? Reflect.get(handle, 'fd') : undefined;
  if (typeof fd !== 'number' || fd < 0) {
    throw new WorkloadApiError(
      'ERR_WORKLOADAPI_PEERCRED',
      'accepted socket has no file descriptor; peer credentials need a Unix socket on Linux',
    );
  }
  return fd;
}

/**
 * SO_PEERCRED of an accepted Unix socket: the pid, uid and gid of the process that called
 * connect(2), as the kernel recorded them then.
 *
 * @throws WorkloadApiError `ERR_WORKLOADAPI_PEERCRED` when the kernel does not answer.
 */
export function peerCredentials(socket: Socket): CallerCredentials {
  const { getsockopt } = loadLibc();
  const out: Record<string, number> = {};
  const len = [12];
  if (getsockopt(socketFd(socket), SOL_SOCKET, SO_PEERCRED, out, len) !== 0) {
    throw new WorkloadApiError(
      'ERR_WORKLOADAPI_PEERCRED',
      `getsockopt(SO_PEERCRED) failed with errno ${koffi.errno()}`,
    );
  }
  const { pid, uid, gid } = out;
  if (pid === undefined || uid === undefined || gid === undefined) {
    throw new WorkloadApiError('ERR_WORKLOADAPI_PEERCRED', 'getsockopt(SO_PEERCRED) returned no credentials');
  }
  return { pid, uid, gid };
}
