/**
 * Who the demo's workloads are and how the agent tells them apart. The demo process itself gets
 * `spiffe://<td>/demo/user` by its uid and gid. The two mTLS workloads are node processes like the
 * demo, so something else must differ: as root they run under group ids of their own
 * (`unix:gid:N`, unused numbers, nothing is added to /etc/group); otherwise the client runs from a
 * copy of the node executable in the demo directory (`unix:path:…`).
 *
 * @module
 */
import { readFileSync } from 'node:fs';
import { SpiffeId, type TrustDomain } from '../spiffe/index.js';

export interface DemoWorkload {
  readonly id: SpiffeId;
  /** Selectors of its registration entry. */
  readonly selectors: readonly string[];
  /** Credentials to spawn it with (as root). */
  readonly credentials: { readonly uid?: number; readonly gid?: number };
  /** The executable to run it with. */
  readonly node: string;
}

export interface DemoWorkloads {
  readonly user: DemoWorkload;
  readonly server: DemoWorkload;
  readonly client: DemoWorkload;
}

/** Two group ids from 61000 up that /etc/group does not name and the demo does not run with. */
function unusedGids(own: number): [number, number] {
  let text = '';
  try {
    text = readFileSync('/etc/group', 'utf8');
  } catch {
    // No group file: every number is unused.
  }
  const used = new Set(text.split('\n').map((line) => Number(line.split(':')[2])));
  used.add(own);
  const free: number[] = [];
  for (let gid = 61000; free.length < 2; gid++) if (!used.has(gid)) free.push(gid);
  return [free[0] ?? 61000, free[1] ?? 61001];
}

/**
 * @param node the real path of the node executable
 * @param nodeCopy where the client's copy of node goes when not root
 */
export function workloadIdentities(
  td: TrustDomain,
  ids: { uid: number; gid: number },
  node: string,
  nodeCopy: string,
): DemoWorkloads {
  const id = (name: string) => SpiffeId.fromSegments(td, 'demo', name);
  const user: DemoWorkload = {
    id: id('user'),
    selectors: [`unix:uid:${ids.uid}`, `unix:gid:${ids.gid}`],
    credentials: {},
    node,
  };
  if (ids.uid === 0) {
    const [serverGid, clientGid] = unusedGids(ids.gid);
    return {
      user,
      server: {
        id: id('server'),
        selectors: ['unix:uid:0', `unix:gid:${serverGid}`],
        credentials: { uid: 0, gid: serverGid },
        node,
      },
      client: {
        id: id('client'),
        selectors: ['unix:uid:0', `unix:gid:${clientGid}`],
        credentials: { uid: 0, gid: clientGid },
        node,
      },
    };
  }
  return {
    user,
    server: {
      id: id('server'),
      selectors: [`unix:uid:${ids.uid}`, `unix:path:${node}`],
      credentials: {},
      node,
    },
    client: {
      id: id('client'),
      selectors: [`unix:uid:${ids.uid}`, `unix:path:${nodeCopy}`],
      credentials: {},
      node: nodeCopy,
    },
  };
}
