import type { AgentApiClient } from './client.js';
import { AgentError } from './errors.js';
import { ServerTrustError } from './server-cert.js';

/** A use of the kept client; `release` once the call (or stream) is done with it. */
export interface Lease {
  readonly client: AgentApiClient;
  /** Called once when this client is retired while the lease is held: a stream then moves. */
  onRetired(listener: () => void): void;
  release(): void;
  /** Retires this client after `error` unless the server answered it (see {@link redialAfter}). */
  failed(error: unknown): void;
}

interface Held {
  readonly client: AgentApiClient;
  readonly svid: object;
  readonly trust: string;
  readonly address: string;
  users: number;
  retired: boolean;
  readonly listeners: Set<() => void>;
}

/**
 * The agent's client to the server on its SVID, shared by every call made with it (sync rounds,
 * renewal, JWT-SVID minting, the re-quote stream): one grpc channel, so one TLS handshake, for as
 * long as what it was made with holds. The server still authenticates the agent SVID on every call
 * (its serial against the node's current one), so keeping the connection grants nothing more.
 *
 * A client is retired when a call needs other credentials (another SVID or bundle) or goes to
 * another server, or after a failure that may lie in the connection; it is closed once its last lease is released, so calls
 * and streams still on it finish there while new ones dial.
 */
export class KeptClient {
  #kept: Held | undefined;

  /**
   * A lease on the kept client when it was made for this very `svid` (a renewal or attestation
   * brings a new object), the same `trust` (the bundle and where it came from) and the server at
   * `address` (failover moves to another); on a new one from `open` otherwise, the old one retired.
   */
  acquire(svid: object, trust: string, address: string, open: () => AgentApiClient): Lease {
    let held = this.#kept;
    if (held === undefined || held.svid !== svid || held.trust !== trust || held.address !== address) {
      if (held !== undefined) this.#retire(held);
      held = { client: open(), svid, trust, address, users: 0, retired: false, listeners: new Set() };
      this.#kept = held;
    }
    held.users++;
    return this.#lease(held);
  }

  /** Retires the kept client (the agent stops): closed now, or when its last lease is released. */
  close(): void {
    if (this.#kept !== undefined) this.#retire(this.#kept);
  }

  #lease(held: Held): Lease {
    let released = false;
    let listener: (() => void) | undefined;
    const release = () => {
      if (released) return;
      released = true;
      if (listener !== undefined) held.listeners.delete(listener);
      held.users--;
      if (held.retired && held.users === 0) held.client.close();
    };
    return {
      client: held.client,
      onRetired: (l) => {
        listener = l;
        if (held.retired) l();
        else held.listeners.add(l);
      },
      release,
      failed: (error) => {
        if (redialAfter(error)) this.#retire(held);
      },
    };
  }

  #retire(held: Held): void {
    if (this.#kept === held) this.#kept = undefined;
    if (held.retired) return;
    held.retired = true;
    for (const listener of [...held.listeners]) listener();
    held.listeners.clear();
    if (held.users === 0) held.client.close();
  }
}

/**
 * Whether a failed call should leave the connection it ran on: yes unless the server answered it
 * with a refusal of its own, which proves the connection sound (the server checks the SVID per
 * call anyway). A transport failure (a server restarted), a refused server certificate (checked
 * again on the next dial, and named by its cause there) or a garbled answer all redial.
 */
function redialAfter(error: unknown): boolean {
  if (!(error instanceof AgentError) || error instanceof ServerTrustError) return true;
  return error.code === 'ERR_AGENT_SERVER_UNAVAILABLE' || error.code === 'ERR_AGENT_PROTOCOL';
}
