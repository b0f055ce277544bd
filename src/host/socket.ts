/**
 * Unix socket paths, claimed only when nobody serves them. A socket file whose listener is gone
 * (the process was killed) is stale and may be replaced; one that accepts connections belongs to a
 * live process and is refused by name, before anything else is touched. Nothing here removes a
 * socket this process bound: closing the listener does that (libuv unlinks the path it bound), so a
 * process that never bound a path never removes it.
 *
 * @module
 */
import { lstatSync, unlinkSync } from 'node:fs';
import { connect } from 'node:net';
import { HostError } from './errors.js';

type SocketState = 'absent' | 'stale' | 'live';

/**
 * Refuses `path` when it holds something other than a socket, or a socket another process
 * serves; changes nothing (`validate`, and a start-up check before binding).
 *
 * @param key the config key that names the path, e.g. `admin_socket`
 */
export async function checkSocketPath(path: string, key: string): Promise<SocketState> {
  let isSocket: boolean;
  try {
    isSocket = lstatSync(path).isSocket();
  } catch {
    return 'absent';
  }
  if (!isSocket)
    throw new HostError(
      'ERR_SOCKET_NOT_SOCKET',
      key,
      `${key} ${path} exists and is not a socket; remove it or choose another ${key}`,
    );
  const state = await probe(path, key);
  if (state === 'live')
    throw new HostError(
      'ERR_SOCKET_IN_USE',
      key,
      `${key} ${path} is served by another running process; stop it, or choose another ${key}`,
    );
  return state;
}

/** Like {@link checkSocketPath}, then removes a stale socket so the path can be bound. */
export async function claimSocketPath(path: string, key: string): Promise<void> {
  if ((await checkSocketPath(path, key)) === 'stale') unlinkSync(path);
}

function probe(path: string, key: string): Promise<SocketState> {
  return new Promise((resolve, reject) => {
    const socket = connect(path);
    socket.once('connect', () => {
      socket.destroy();
      resolve('live');
    });
    socket.once('error', (error: NodeJS.ErrnoException) => {
      // ECONNREFUSED: a socket file with no listener. EAGAIN: a listener whose backlog is full.
      if (error.code === 'ECONNREFUSED') resolve('stale');
      else if (error.code === 'ENOENT') resolve('absent');
      else if (error.code === 'EAGAIN') resolve('live');
      else
        reject(
          new HostError(
            'ERR_SOCKET_UNUSABLE',
            key,
            `${key} ${path} cannot be checked (${error.message}); run as a user who may use it, or choose another ${key}`,
            { cause: error },
          ),
        );
    });
  });
}
