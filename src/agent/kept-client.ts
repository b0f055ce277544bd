import type { AgentApiClient } from './client.js';

/**
 * The sync loop's client, kept from round to round: one grpc channel, so one TLS handshake, for as
 * long as what it was made with holds. The server still authenticates the agent SVID on every call
 * (its serial against the node's current one), so keeping the connection grants nothing more.
 */
export class KeptClient {
  #kept: { client: AgentApiClient; svid: object; trust: string } | undefined;

  /**
   * The kept client when it was made for this very `svid` (a renewal or attestation brings a new
   * object) and the same `trust` (the bundle and where it came from); a new one from `open`
   * otherwise, the old one closed.
   */
  get(svid: object, trust: string, open: () => AgentApiClient): AgentApiClient {
    const kept = this.#kept;
    if (kept !== undefined && kept.svid === svid && kept.trust === trust) return kept.client;
    this.close();
    const client = open();
    this.#kept = { client, svid, trust };
    return client;
  }

  /** Closes the kept client: after a failed call the next round dials afresh, and checks the server's certificate again. */
  close(): void {
    this.#kept?.client.close();
    this.#kept = undefined;
  }
}
