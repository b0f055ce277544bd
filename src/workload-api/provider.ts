/**
 * The seam between the Workload API server and whatever knows identities (the agent's SVID cache).
 * The server owns the wire protocol and the caller's kernel credentials; the provider owns
 * attestation, entries and key material. Keep this interface small: the agent implements it.
 *
 * @module
 */
import type { SpiffeBundle, SpiffeId } from '../spiffe/index.js';

/** The caller as the kernel reported it (SO_PEERCRED) when it connected; never what it says. */
export interface CallerCredentials {
  readonly pid: number;
  readonly uid: number;
  readonly gid: number;
}

/** A workload selector `type:value`, as SPIRE writes them, e.g. `unix:uid:1000`, `k8s:ns:default`. */
export type Selector = string;

/** One X.509-SVID with its private key, as the Workload API delivers it. */
export interface X509SvidMaterial {
  readonly spiffeId: SpiffeId;
  /** DER certificates, leaf first, then any intermediates. */
  readonly chainDer: readonly Uint8Array[];
  /** Unencrypted DER PKCS#8 private key of the leaf. */
  readonly keyPkcs8Der: Uint8Array;
  /** Optional label (≤ 1024 bytes) a workload uses to pick among its identities. */
  readonly hint?: string;
}

/**
 * What a set of selectors is entitled to, at one moment. The server encodes a stream response once
 * per distinct set of these objects (by identity) and shares the bytes with every stream given the
 * same objects: never change a material or bundle once returned; new content is a new object.
 */
export interface WorkloadIdentities {
  /** The caller's X.509-SVIDs, default identity first. Empty means: no identity (PermissionDenied). */
  readonly svids: readonly X509SvidMaterial[];
  /** The bundle (X.509 and JWT authorities) of the agent's own trust domain. */
  readonly bundle: SpiffeBundle;
  /** Bundles of the foreign trust domains these identities federate with. */
  readonly federatedBundles: readonly SpiffeBundle[];
}

/**
 * Implemented by the agent's SVID cache. The server calls it for every RPC and every stream:
 * `attest` once per call, `identities` for each message it sends, and re-sends stream state when a
 * `subscribe` listener fires.
 */
export interface WorkloadIdentityProvider {
  /**
   * Selectors of the calling process, from the workload attestors. Rejects when the process cannot
   * be attested (it exited, /proc unreadable); the server then answers PermissionDenied.
   */
  attest(caller: CallerCredentials): Promise<readonly Selector[]>;
  /**
   * Optional. Selector kinds (`unix:sha256`) that `selectors`, as `attest` returned them, were
   * attested without because no entry used them then: not computed, which is not the same as
   * absent. The server names them where it logs selectors.
   */
  notComputed?(selectors: readonly Selector[]): readonly string[];
  /**
   * Optional. True when an entry now uses a kind `selectors` were attested without: they must not
   * be matched again until the caller is attested anew. The server asks before every stream update.
   */
  attestAgain?(selectors: readonly Selector[]): boolean;
  /** A snapshot of what `selectors` are entitled to. Synchronous: it reads the cache, never the network. */
  identities(selectors: readonly Selector[]): WorkloadIdentities;
  /**
   * A JWT-SVID for `spiffeId` (one of the identities `identities` returned) with `aud` = `audience`.
   * The server has already checked the caller's entitlement to `spiffeId`.
   */
  mintJwtSvid(spiffeId: SpiffeId, audience: readonly string[]): Promise<string>;
  /**
   * Calls `listener` after anything `identities` could return has changed (rotation, bundle update,
   * entry change). Returns the unsubscribe function.
   */
  subscribe(listener: () => void): () => void;
}
