/**
 * The kernel's word on who is at the other end of a Unix socket (SO_PEERCRED), read through koffi
 * because Node's `net` does not expose it. What a client says about itself is never consulted.
 *
 * @module
 */
import type { Socket } from 'node:net';
import koffi from 'koffi';

export interface PeerCredentials {
  pid: number;
  uid: number;
  gid: number;
}

const SOL_SOCKET = 1;
const SO_PEERCRED = 17;
const UCRED_SIZE = 12;

interface Libc {
  getsockopt(fd: number, level: number, name: number, out: Partial<PeerCredentials>, len: number[]): number;
}

let libc: Libc | undefined;

function load(): Libc {
  if (libc) return libc;
  const lib = koffi.load('libc.so.6');
  koffi.struct('ironroot_ucred', { pid: 'int32', uid: 'uint32', gid: 'uint32' });
  const getsockopt = lib.func('int getsockopt(int, int, int, _Out_ ironroot_ucred *, _Inout_ uint32_t *)');
  libc = {
    getsockopt: (fd, level, name, out, len) => Number(getsockopt(fd, level, name, out, len)),
  };
  return libc;
}

/** The file descriptor under a connected net.Socket (libuv's handle keeps it as `fd`). */
function socketFd(socket: Socket): number {
  const handle: unknown = Reflect.get(socket, '_handle');
  const fd: unknown = handle !== null && typeof handle === 'object' ? Reflect.get(handle, 'fd') : undefined;
  if (typeof fd !== 'number' || fd < 0) throw new Error('admin socket: connection has no file descriptor');
  return fd;
}

export function peerCredentials(socket: Socket): PeerCredentials {
  const out: Partial<PeerCredentials> = {};
  const len = [UCRED_SIZE];
  const rc = load().getsockopt(socketFd(socket), SOL_SOCKET, SO_PEERCRED, out, len);
  if (rc !== 0 || out.pid === undefined || out.uid === undefined || out.gid === undefined) {
    throw new Error(`admin socket: getsockopt(SO_PEERCRED) failed (rc ${rc})`);
  }
  return { pid: out.pid, uid: out.uid, gid: out.gid };
}
