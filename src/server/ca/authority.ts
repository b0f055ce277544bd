/**
 * The server's certificate authority: an X.509 CA and a JWT signing key, each with keys in the
 * KeyManager (an HSM in production), rotated in two slots after SPIRE's model (see rotation.ts)
 * and journaled in the datastore together with the bundle they publish, so a restart resumes the
 * same keys at the same step.
 *
 * Every change (initialise, prepare, activate, prune, taint, revoke) runs one at a time, commits the
 * journal and the own bundle in one transaction, and only then updates memory; keys leave the
 * token only after the bundle that named them has been committed without them.
 *
 * Several servers may share one datastore and one token. Only the holder of the rotation lease
 * changes the journal, and a change is written only if the journal is still at the version it was
 * decided on; each server reloads the journal when its version moved (before signing, at most once a
 * second, and at every rotation check), so it serves the bundle and signs with the key another server
 * published. Keys are found on the token by id when first used.
 *
 * @module
 */
import { createPublicKey, type KeyObject, randomBytes, X509Certificate } from 'node:crypto';
import { hostname } from 'node:os';
import { setTimeout as sleep } from 'node:timers/promises';
import type { JoseAlgorithm, KeyManager, KeyType } from '../../hsm/key-manager.js';
import {
  mintJwtSvid,
  mintX509Ca,
  mintX509SvidDer,
  newKeyPair,
  type Signer,
  SpiffeBundle,
  SpiffeId,
  TrustDomain,
} from '../../spiffe/index.js';
import { type Clock, nowSeconds } from '../clock.js';
import type { CaChange, CaSlot, Datastore, Lease } from '../datastore/datastore.js';
import { CaError, CaJournalConflictError, CaLeaseHeldError } from '../errors.js';
import type { Logger } from '../log.js';
import { rotationStep, shouldPrune } from './rotation.js';

export type AuthorityKind = 'x509' | 'jwt';
const KINDS: readonly AuthorityKind[] = ['x509', 'jwt'];

/** The datastore lease that whoever changes the CA journal holds. */
export const ROTATION_LEASE = 'ca-rotation';
/**
 * How long the lease lasts unless renewed (before each step). Longer than one step takes (an RSA key
 * generation on a slow HSM), short enough that a server that died holding it holds nobody up for long.
 */
export const ROTATION_LEASE_MS = 60_000;
/** Signing checks the journal version at most this often (ms): a query per SVID would cost more. */
const SIGN_SYNC_MS = 1_000;
/** While another server holds the lease and this one has no active key yet, open() waits this long (ms)… */
const OPEN_WAIT_MS = 1_000;
/** …at most this often: past the lease's time, so a lease left by a dead server is taken over. */
const OPEN_WAIT_ROUNDS = Math.ceil((2 * ROTATION_LEASE_MS) / OPEN_WAIT_MS);

/** The JOSE algorithm each key type signs with (RSA keys sign RS256, as SPIRE's do). */
const ALGORITHM: Record<KeyType, JoseAlgorithm> = {
  'ec-p256': 'ES256',
  'ec-p384': 'ES384',
  'rsa-2048': 'RS256',
  'rsa-3072': 'RS256',
  'rsa-4096': 'RS256',
};

/** An upstream CA that signs this server's CA certificates instead of them being self-signed. */
export interface UpstreamAuthority {
  /** The upstream CA certificate, then any certificates above it, up to and including the root. */
  chain: X509Certificate[];
  signer: Signer;
}

export interface CaOptions {
  trustDomain: string;
  keyManager: KeyManager;
  datastore: Datastore;
  clock: Clock;
  logger: Logger;
  /** Lifetime of each CA certificate and JWT key, seconds. */
  caTtl: number;
  keyType: KeyType;
  subject?: string;
  upstream?: UpstreamAuthority;
  /** `spiffe_refresh_hint` of the published bundle, seconds. */
  refreshHint: number;
  /** `iss` of JWT-SVIDs, when configured. */
  jwtIssuer?: string;
  /**
   * Names this server in the rotation lease and in errors of servers waiting for it; unique among
   * the servers sharing the datastore. Default: host name, process id and a random suffix.
   */
  holder?: string;
}

export interface MintedX509Svid {
  /** Leaf first, then any intermediates up to (not including) the bundle's root, as DER. */
  readonly chainDer: readonly Uint8Array[];
  /**
   * The same chain parsed. The leaf is parsed on first access only: the APIs that issue SVIDs send
   * the bytes, and parsing a new certificate costs more than minting it.
   */
  readonly chain: readonly X509Certificate[];
  expiresAt: number;
  /** Key id of the CA key that signed the leaf. */
  authority: string;
}

/** Called after every committed change of the CA journal, before the change's call resolves. */
export type CaChangeListener = () => Promise<void>;

export class CertificateAuthority {
  readonly #o: CaOptions;
  readonly #trustDomain: TrustDomain;
  readonly #holder: string;
  #slots: CaSlot[] = [];
  #sequence = 0;
  #document = '';
  /** The journal version #slots, #sequence and #document were read at or written as. */
  #version = 0;
  /** The journal check in flight, shared by everyone who asks meanwhile. */
  #syncing: Promise<void> | undefined;
  /** When (clock ms) signing last checked the journal version. */
  #signSyncedAt = Number.NEGATIVE_INFINITY;
  /** Listeners running for the last reload; rotate() waits for them. */
  #notified: Promise<void> = Promise.resolve();
  /**
   * The bundle last built for `bundle()`, with the journal state it was built from. Every agent API
   * call verifies its client certificate against the bundle, and building one parses each JWT key
   * (a third of the server's CPU at 1000 agents); slots and sequence change only by assignment.
   */
  #served: { slots: readonly CaSlot[]; sequence: number; bundle: SpiffeBundle } | undefined;
  readonly #signers = new Map<string, Signer>();
  #queue: Promise<unknown> = Promise.resolve();
  readonly #listeners = new Set<CaChangeListener>();
  #crossSigned: { pair: string; certificate: X509Certificate } | undefined;
  /** The journal as open() found it, and the keys generated since: what undoOpen() reverts. */
  #opened: readonly CaSlot[] = [];
  #generated: Set<string> | undefined = new Set<string>();
  /**
   * Each journaled CA certificate parsed once, keyed by its DER array: slots are copied on every
   * state change but share that array, and a rotation brings a new one. Every SVID and every bundle
   * used to parse the CA certificate again.
   */
  readonly #certificates = new WeakMap<Uint8Array, X509Certificate>();

  private constructor(options: CaOptions) {
    this.#o = options;
    this.#trustDomain = TrustDomain.parse(options.trustDomain);
    this.#holder = options.holder ?? `${hostname()} pid ${process.pid} (${randomBytes(3).toString('hex')})`;
  }

  /**
   * Loads the journal, checks its keys are still there, and brings both authorities up to date. When
   * that fails part-way, the keys it generated are taken off the journal and the token again.
   */
  static async open(options: CaOptions): Promise<CertificateAuthority> {
    const ca = new CertificateAuthority(options);
    await ca.#load();
    try {
      await ca.#startRotation();
    } catch (error) {
      await ca.undoOpen();
      throw error;
    }
    return ca;
  }

  /**
   * For a server start that fails after open(): restores the journal as open() found it and destroys
   * the keys generated since, so failed starts leave no keys on the token. Keys the journal named
   * before are never destroyed; when the datastore cannot be written, only the generated keys it does
   * not name are.
   */
  undoOpen(): Promise<void> {
    return this.#serial(async () => {
      const generated = this.#generated ?? new Set<string>();
      this.#generated = undefined;
      if (generated.size === 0) return;
      // The start is abandoned: nothing is served, so nothing re-issues its certificates.
      this.#listeners.clear();
      const { logger } = this.#o;
      const key = (s: CaSlot) => `${s.authority}/${s.keyId}`;
      const current = new Map(this.#slots.map((s) => [key(s), s]));
      const before = new Set(this.#opened.map(key));
      // Only what this start changed is written back (an activation it made is undone).
      const changed = (s: CaSlot) => {
        const now = current.get(key(s));
        return now !== undefined && (now.state !== s.state || now.tainted !== s.tainted);
      };
      try {
        await this.#commit(
          {
            upsert: this.#opened.filter(changed),
            remove: this.#slots
              .filter((s) => !before.has(key(s)))
              .map((s) => ({ authority: s.authority, keyId: s.keyId })),
          },
          'ca.undo_start',
          'server',
        );
      } catch (error) {
        logger.error({ err: error }, "could not take this start's CA keys off the journal; keeping them");
      }
      const named = new Set(this.#slots.map((s) => s.keyId));
      const destroyed: string[] = [];
      for (const keyId of generated) {
        if (named.has(keyId)) continue;
        try {
          await this.#destroy(keyId);
          destroyed.push(keyId);
        } catch (error) {
          logger.error(
            { err: error, key_id: keyId },
            'could not destroy a CA key of the failed start; find it with "ironroot-server hsm keys list" (orphan) and destroy it',
          );
        }
      }
      if (destroyed.length > 0)
        logger.warn({ key_ids: destroyed }, 'start failed: destroyed the CA keys this start had generated');
    });
  }

  /** The server started: keys generated from now on are rotation's, never undone by undoOpen(). */
  confirmOpen(): void {
    this.#generated = undefined;
  }

  /** Every journaled key, oldest first. */
  get slots(): readonly CaSlot[] {
    return this.#slots;
  }

  /** The own bundle as served: every published authority, with sequence and refresh hint. */
  bundle(): SpiffeBundle {
    const served = this.#served;
    if (served !== undefined && served.slots === this.#slots && served.sequence === this.#sequence)
      return served.bundle;
    const bundle = this.#buildBundle(this.#slots, BigInt(this.#sequence));
    this.#served = { slots: this.#slots, sequence: this.#sequence, bundle };
    return bundle;
  }

  /**
   * Subscribes to journal changes (prepare, activate, taint, revoke, prune): whatever presents a
   * certificate from this CA re-issues it before the change's call resolves. Returns the unsubscriber.
   */
  onChange(listener: CaChangeListener): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /**
   * Prepares, activates and prunes as the clock says; call it periodically. Picks up what other
   * servers changed first (their reload's listeners have run when it resolves); a step that is due
   * is taken under the rotation lease, or left to the server that holds it.
   */
  rotate(): Promise<void> {
    return this.#serial(async () => {
      await this.#rotateOnce();
    });
  }

  /** Reloads the journal if another server changed it since: for callers about to read `slots`. */
  refresh(): Promise<void> {
    return this.#catchUp();
  }

  prepare(kind: AuthorityKind, actor: string): Promise<CaSlot> {
    return this.#leased(async () => {
      const prepared = this.#find(kind, 'prepared');
      if (prepared) {
        throw new CaError(
          'ERR_CA_ALREADY_PREPARED',
          `the ${kind} authority already has a prepared key (${prepared.keyId}); activate it first`,
        );
      }
      return this.#prepare(kind, actor);
    });
  }

  activate(kind: AuthorityKind, actor: string): Promise<CaSlot> {
    return this.#leased(async () => {
      if (!this.#find(kind, 'prepared')) {
        throw new CaError(
          'ERR_CA_NOTHING_PREPARED',
          `the ${kind} authority has no prepared key; run prepare first`,
        );
      }
      return this.#activate(kind, actor);
    });
  }

  /** Marks a retired key as compromised, so holders of SVIDs it signed know to rotate. */
  taint(kind: AuthorityKind, keyId: string, actor: string): Promise<CaSlot> {
    return this.#leased(async () => {
      const slot = this.#retired(kind, keyId);
      const tainted = { ...slot, tainted: true };
      await this.#commit({ upsert: [tainted], remove: [] }, `ca.${kind}.taint`, actor);
      this.#o.logger.warn({ authority: kind, key_id: keyId }, 'CA key tainted');
      return tainted;
    });
  }

  /** Removes a tainted key from the bundle at once and destroys it. */
  revoke(kind: AuthorityKind, keyId: string, actor: string): Promise<CaSlot> {
    return this.#leased(async () => {
      const slot = this.#retired(kind, keyId);
      if (!slot.tainted) {
        throw new CaError(
          'ERR_CA_AUTHORITY_NOT_TAINTED',
          `key ${keyId} is not tainted; taint it before revoking it`,
        );
      }
      await this.#commit({ upsert: [], remove: [{ authority: kind, keyId }] }, `ca.${kind}.revoke`, actor);
      await this.#destroy(keyId);
      this.#o.logger.warn({ authority: kind, key_id: keyId }, 'CA key revoked and removed from the bundle');
      return slot;
    });
  }

  /** Signs an X.509-SVID with the active CA; it never outlives the CA certificate. */
  async mintX509Svid(template: {
    spiffeId: SpiffeId;
    publicKey: KeyObject;
    ttl: number;
    dnsNames?: readonly string[];
  }): Promise<MintedX509Svid> {
    await this.#syncForSigning();
    const active = this.#active('x509');
    const now = nowSeconds(this.#o.clock);
    const expiresAt = Math.min(now + template.ttl, active.notAfter);
    const caCertificate = this.#certificate(active);
    const leaf = await mintX509SvidDer(
      {
        spiffeId: template.spiffeId,
        publicKey: template.publicKey,
        notBefore: new Date(now * 1000),
        notAfter: new Date(expiresAt * 1000),
        ...(template.dnsNames ? { dnsNames: template.dnsNames } : {}),
      },
      { certificate: caCertificate, signer: await this.#signer(active.keyId) },
    );
    // With an upstream authority the bundle holds its root; the chain carries everything below it.
    const upstream = this.#o.upstream ? [caCertificate, ...this.#o.upstream.chain.slice(0, -1)] : [];
    return mintedSvid(leaf, upstream, expiresAt, active.keyId);
  }

  /**
   * Signs the server's own TLS SVID. While the key the active CA replaced is still on the token, the
   * chain also carries the active CA certificate cross-signed by that key: a peer that only trusts
   * the previous CA (an agent stopped before the new one was prepared) can still verify the server,
   * and learns the new CA from the bundle it then fetches. A peer that trusts the active CA ignores
   * the cross-certificate. With an upstream authority the root never changes, so none is needed.
   */
  async mintServerSvid(template: {
    spiffeId: SpiffeId;
    publicKey: KeyObject;
    ttl: number;
  }): Promise<MintedX509Svid> {
    const minted = await this.mintX509Svid(template);
    const cross = await this.#crossSignedActive();
    const [leaf] = minted.chainDer;
    if (cross === undefined || leaf === undefined) return minted;
    // There is no cross-certificate under an upstream authority, so the leaf is all the chain holds.
    return mintedSvid(leaf, [cross], minted.expiresAt, minted.authority);
  }

  /** Signs a JWT-SVID with the active JWT key; it never outlives the key's publication. */
  async mintJwtSvid(template: {
    spiffeId: SpiffeId;
    audience: readonly string[];
    ttl: number;
  }): Promise<{ token: string; expiresAt: number }> {
    await this.#syncForSigning();
    const active = this.#active('jwt');
    const now = nowSeconds(this.#o.clock);
    const expiresAt = Math.min(now + template.ttl, active.notAfter);
    const token = await mintJwtSvid(
      {
        spiffeId: template.spiffeId,
        audience: template.audience,
        expiresAt: new Date(expiresAt * 1000),
        issuedAt: new Date(now * 1000),
        keyId: active.keyId,
        ...(this.#o.jwtIssuer ? { claims: { iss: this.#o.jwtIssuer } } : {}),
      },
      await this.#signer(active.keyId),
    );
    return { token, expiresAt };
  }

  /**
   * Signs a short X.509-SVID for the server's own ID with a throw-away key: readiness means the CA
   * key answers (on a token, the HSM signs), not merely that it was there at start-up.
   */
  async selfTest(): Promise<void> {
    const { publicKey } = newKeyPair('ec', { namedCurve: 'P-256' });
    await this.mintX509Svid({
      spiffeId: SpiffeId.fromPath(this.#trustDomain, '/ironroot/server'),
      publicKey,
      ttl: 60,
    });
  }

  // --- internals ---------------------------------------------------------------------------

  /** The active CA certificate signed by the newest replaced key still unexpired on the token. */
  async #crossSignedActive(): Promise<X509Certificate | undefined> {
    if (this.#o.upstream) return undefined;
    const now = nowSeconds(this.#o.clock);
    const active = this.#active('x509');
    const previous = this.#slots
      .filter((s) => s.authority === 'x509' && s.state === 'old' && s.certificateDer && s.notAfter > now)
      .at(-1);
    if (previous === undefined) return undefined;
    const pair = `${active.keyId}/${previous.keyId}`;
    if (this.#crossSigned?.pair === pair) return this.#crossSigned.certificate;
    // A tainted previous key still signs this: whoever holds that key can impersonate the server to
    // peers that trust only it anyway, and the certificate is useless to a peer that dropped it.
    const certificate = await mintX509Ca(
      {
        trustDomain: this.#trustDomain,
        publicKey: createPublicKey({ key: Buffer.from(active.publicKeyDer), format: 'der', type: 'spki' }),
        notBefore: new Date(Math.max(active.notBefore, previous.notBefore) * 1000),
        notAfter: new Date(Math.min(active.notAfter, previous.notAfter) * 1000),
        ...(this.#o.subject ? { subject: this.#o.subject } : {}),
      },
      {
        certificate: this.#certificate(previous),
        signer: await this.#signer(previous.keyId),
      },
    );
    this.#crossSigned = { pair, certificate };
    return certificate;
  }

  async #load(): Promise<void> {
    const { datastore, keyManager, logger } = this.#o;
    // The version first: a change committed between the reads shows as a newer version later.
    this.#version = await datastore.caJournalVersion();
    this.#slots = (await datastore.listCaSlots()).sort(byAge);
    const stored = await datastore.getBundle(this.#o.trustDomain);
    this.#sequence = stored?.sequence ?? 0;
    this.#document = stored ? this.#contentOf(stored.document) : '';
    const missing: CaSlot[] = [];
    for (const slot of this.#slots) {
      if ((await keyManager.getKey(slot.keyId)) === undefined) missing.push(slot);
    }
    this.#opened = this.#slots;
    if (missing.length === 0) {
      if (this.#slots.length > 0)
        logger.info({ keys: this.#slots.map(describe) }, 'CA resumed from its journal');
      // The published keys can change with no journal change (another upstream root): republish.
      if (stored) await this.#commit({ upsert: [], remove: [] }, 'ca.republish', 'server');
      return;
    }
    const ids = missing.map((s) => s.keyId).join(', ');
    if (keyManager.kind !== 'memory') {
      // On a token or disk, a missing key means the wrong key store, not a fresh start.
      throw new CaError(
        'ERR_CA_KEY_MISSING',
        `CA key(s) ${ids} named by the CA journal are not in the ${keyManager.kind} key manager; check that key_manager points at the token (or directory) this server used before`,
      );
    }
    logger.warn(
      { key_ids: missing.map((s) => s.keyId) },
      'memory key manager lost the CA keys at restart; dropping them from the journal and the bundle',
    );
    await this.#commit(
      { upsert: [], remove: missing.map((s) => ({ authority: s.authority, keyId: s.keyId })) },
      'ca.forget_lost_keys',
      'server',
    );
    this.#opened = this.#slots;
  }

  /**
   * open()'s first rotation. While another server holds the lease and this one has no active key
   * (servers starting together on an empty journal), waits for that server's keys, or for its lease
   * to run out.
   */
  async #startRotation(): Promise<void> {
    for (let round = 0; ; round++) {
      const held = await this.#serial(() => this.#rotateOnce());
      if (held === undefined || KINDS.every((kind) => this.#find(kind, 'active'))) return;
      if (round >= OPEN_WAIT_ROUNDS) throw new CaLeaseHeldError(held.holder, held.expiresAtMs);
      this.#o.logger.info(
        { holder: held.holder },
        'waiting for the server that holds the CA rotation lease to create the first CA keys',
      );
      await sleep(OPEN_WAIT_MS);
    }
  }

  /** One rotation check; resolves to another server's lease when a step was due but left to it. */
  async #rotateOnce(): Promise<Lease | undefined> {
    await this.#catchUp();
    await this.#notified;
    if (!this.#due()) return undefined;
    const lease = await this.#takeLease();
    if (lease.holder !== this.#holder) {
      this.#o.logger.debug({ holder: lease.holder }, 'CA rotation step due; the lease holder takes it');
      return lease;
    }
    try {
      for (const kind of KINDS) await this.#rotateKind(kind);
      await this.#prune();
    } finally {
      await this.#releaseLease();
    }
    return undefined;
  }

  /** Whether the clock calls for a rotation step: a key to create, prepare, activate or prune. */
  #due(): boolean {
    const now = nowSeconds(this.#o.clock);
    for (const kind of KINDS) {
      const active = this.#find(kind, 'active');
      if (!active || rotationStep(active, this.#find(kind, 'prepared') !== undefined, now) !== 'none')
        return true;
    }
    return this.#slots.some((s) => s.state === 'old' && shouldPrune(s.notAfter, now));
  }

  async #rotateKind(kind: AuthorityKind): Promise<void> {
    // Bounded: a server down for longer than a whole CA lifetime needs prepare and activate at once.
    for (let step = 0; step < 3; step++) {
      // Each step renews the lease and decides on the journal as it is now: a holder that stalled
      // past its lease finds another server's work done (or its lease gone) instead of redoing it.
      await this.#holdLease();
      const active = this.#find(kind, 'active');
      const prepared = this.#find(kind, 'prepared');
      if (!active) {
        if (prepared) await this.#activate(kind, 'server');
        else await this.#initialise(kind);
        continue;
      }
      const next = rotationStep(active, prepared !== undefined, nowSeconds(this.#o.clock));
      if (next === 'none') return;
      if (next === 'prepare') await this.#prepare(kind, 'server');
      else await this.#activate(kind, 'server');
    }
  }

  async #initialise(kind: AuthorityKind): Promise<void> {
    const slot = { ...(await this.#newKey(kind, 'A')), state: 'active' as const };
    await this.#commitNewKey(slot, `ca.${kind}.init`, 'server');
    this.#o.logger.info(describe(slot), 'CA key created and active');
  }

  async #prepare(kind: AuthorityKind, actor: string): Promise<CaSlot> {
    const active = this.#find(kind, 'active');
    const slot = await this.#newKey(kind, active?.slot === 'A' ? 'B' : 'A');
    await this.#commitNewKey(slot, `ca.${kind}.prepare`, actor);
    this.#o.logger.info(describe(slot), 'CA key prepared and published in the bundle');
    return slot;
  }

  async #activate(kind: AuthorityKind, actor: string): Promise<CaSlot> {
    const prepared = this.#find(kind, 'prepared');
    if (!prepared) throw new CaError('ERR_CA_NOTHING_PREPARED', `the ${kind} authority has no prepared key`);
    const active = this.#find(kind, 'active');
    const upsert: CaSlot[] = [{ ...prepared, state: 'active' }];
    if (active) upsert.push({ ...active, state: 'old' });
    await this.#commit({ upsert, remove: [] }, `ca.${kind}.activate`, actor);
    this.#o.logger.info({ ...describe(prepared), replaced: active?.keyId ?? null }, 'CA key activated');
    return { ...prepared, state: 'active' };
  }

  async #prune(): Promise<void> {
    const now = nowSeconds(this.#o.clock);
    if (!this.#slots.some((s) => s.state === 'old' && shouldPrune(s.notAfter, now))) return;
    await this.#holdLease();
    const expired = this.#slots.filter((s) => s.state === 'old' && shouldPrune(s.notAfter, now));
    if (expired.length === 0) return;
    await this.#commit(
      { upsert: [], remove: expired.map((s) => ({ authority: s.authority, keyId: s.keyId })) },
      'ca.prune',
      'server',
    );
    for (const slot of expired) {
      await this.#destroy(slot.keyId);
      this.#o.logger.info(describe(slot), 'expired CA key pruned from the bundle and destroyed');
    }
  }

  async #newKey(kind: AuthorityKind, slot: 'A' | 'B'): Promise<CaSlot> {
    const { keyManager, keyType, caTtl, upstream } = this.#o;
    const now = nowSeconds(this.#o.clock);
    const keyId = `ironroot-${kind}-${now}-${randomBytes(4).toString('hex')}`;
    const key = await keyManager.generateKey(keyId, keyType);
    this.#generated?.add(keyId);
    const upstreamEnd = upstream?.chain[0]
      ? Math.floor(Date.parse(upstream.chain[0].validTo) / 1000)
      : Infinity;
    const notAfter = Math.min(now + caTtl, upstreamEnd);
    const base = {
      authority: kind,
      slot,
      keyId,
      state: 'prepared' as const,
      publicKeyDer: new Uint8Array(key.publicKey.export({ type: 'spki', format: 'der' })),
      notBefore: now,
      notAfter,
      tainted: false,
    };
    if (kind === 'jwt') return base;
    const template = {
      trustDomain: this.#trustDomain,
      publicKey: key.publicKey,
      notBefore: new Date(now * 1000),
      notAfter: new Date(notAfter * 1000),
      ...(this.#o.subject ? { subject: this.#o.subject } : {}),
    };
    const issuerCert = upstream?.chain[0];
    const certificate =
      upstream && issuerCert
        ? await mintX509Ca(template, { certificate: issuerCert, signer: upstream.signer })
        : await mintX509Ca(template, await this.#signer(keyId));
    return { ...base, certificateDer: new Uint8Array(certificate.raw) };
  }

  /**
   * Journals a key just generated. When another server changed the journal first, nothing names the
   * key: it is destroyed again, as no bundle ever published it.
   */
  async #commitNewKey(slot: CaSlot, action: string, actor: string): Promise<void> {
    try {
      await this.#commit({ upsert: [slot], remove: [] }, action, actor);
    } catch (error) {
      if (error instanceof CaJournalConflictError) {
        this.#generated?.delete(slot.keyId);
        await this.#destroy(slot.keyId).catch((destroyError: unknown) =>
          this.#o.logger.error(
            { err: destroyError, key_id: slot.keyId },
            'could not destroy a CA key that was never journaled; find it with "ironroot-server hsm keys list" (orphan) and destroy it',
          ),
        );
      }
      throw error;
    }
  }

  /**
   * Commits the journal change and the bundle it implies together, then adopts them. Written only if
   * the journal is still at the version memory holds; otherwise memory is reloaded and the change
   * fails with CaJournalConflictError.
   */
  async #commit(change: Omit<CaChange, 'bundle'>, action: string, actor: string): Promise<void> {
    const removed = new Set(change.remove.map((r) => `${r.authority}/${r.keyId}`));
    const replaced = new Set(change.upsert.map((u) => `${u.authority}/${u.keyId}`));
    const slots = [
      ...this.#slots.filter(
        (s) => !removed.has(`${s.authority}/${s.keyId}`) && !replaced.has(`${s.authority}/${s.keyId}`),
      ),
      ...change.upsert,
    ].sort(byAge);
    const content = this.#contentOf(this.#buildBundle(slots, undefined).marshal());
    // spiffe_sequence changes exactly when the published keys do (SPIFFE bundle §4.1.1).
    const sequence = content === this.#document ? this.#sequence : this.#sequence + 1;
    const bundle =
      sequence === this.#sequence
        ? undefined
        : {
            trustDomain: this.#o.trustDomain,
            document: this.#buildBundle(slots, BigInt(sequence)).marshal(),
            sequence,
          };
    if (change.upsert.length === 0 && change.remove.length === 0 && bundle === undefined) return;
    let version: number;
    try {
      version = await this.#o.datastore.recordCaChange(
        { ...change, ...(bundle ? { bundle } : {}) },
        action,
        actor,
        this.#version,
      );
    } catch (error) {
      if (error instanceof CaJournalConflictError) await this.#catchUp().catch(() => undefined);
      throw error;
    }
    this.#slots = slots;
    this.#sequence = sequence;
    this.#document = content;
    this.#version = version;
    await this.#notify(action);
  }

  async #notify(action: string): Promise<void> {
    for (const listener of this.#listeners) {
      try {
        await listener();
      } catch (error) {
        this.#o.logger.error({ err: error, action }, 'reacting to a CA change failed');
      }
    }
  }

  /**
   * Reloads journal and bundle when the journal version moved (another server changed them).
   * Callers meanwhile share one check. Listeners run after it, not awaited here: they sign, and
   * signing checks the journal too.
   */
  #sync(): Promise<void> {
    this.#syncing ??= this.#reloadIfMoved().finally(() => {
      this.#syncing = undefined;
    });
    return this.#syncing;
  }

  /**
   * #sync() with a read that starts after this call: a check already in flight may have read the
   * version before the change the caller must see (the last lease holder's, say).
   */
  async #catchUp(): Promise<void> {
    await this.#syncing?.catch(() => undefined);
    await this.#sync();
  }

  async #reloadIfMoved(): Promise<void> {
    const { datastore, logger } = this.#o;
    const version = await datastore.caJournalVersion();
    if (version === this.#version) return;
    const slots = (await datastore.listCaSlots()).sort(byAge);
    const stored = await datastore.getBundle(this.#o.trustDomain);
    // This server's own commit of that version may have been adopted while the reads ran.
    if (version <= this.#version) return;
    this.#slots = slots;
    this.#sequence = stored?.sequence ?? 0;
    this.#document = stored ? this.#contentOf(stored.document) : '';
    this.#version = version;
    logger.info({ version, keys: slots.map(describe) }, 'CA journal changed by another server; reloaded');
    this.#notified = this.#notified.then(() => this.#notify('ca.reload'));
  }

  /**
   * Before signing, at most once a second: a failing check (datastore down) signs with the keys in
   * memory, which stay valid long after another server replaced them.
   */
  async #syncForSigning(): Promise<void> {
    const now = this.#o.clock.now();
    if (now - this.#signSyncedAt < SIGN_SYNC_MS) return;
    this.#signSyncedAt = now;
    try {
      await this.#sync();
    } catch (error) {
      this.#o.logger.warn(
        { err: error },
        'could not check the CA journal for changes; signing with the keys known',
      );
    }
  }

  /** Runs an operator's change under the lease; refused, naming the holder, while another holds it. */
  #leased<T>(fn: () => Promise<T>): Promise<T> {
    return this.#serial(async () => {
      const lease = await this.#takeLease();
      if (lease.holder !== this.#holder) throw new CaLeaseHeldError(lease.holder, lease.expiresAtMs);
      try {
        await this.#catchUp();
        return await fn();
      } finally {
        await this.#releaseLease();
      }
    });
  }

  #takeLease(): Promise<Lease> {
    const { datastore, clock } = this.#o;
    return datastore.acquireLease(ROTATION_LEASE, this.#holder, clock.now(), ROTATION_LEASE_MS);
  }

  /** Renews the lease this server took, then catches up with the journal; fails if it was taken over. */
  async #holdLease(): Promise<void> {
    const lease = await this.#takeLease();
    if (lease.holder !== this.#holder) throw new CaLeaseHeldError(lease.holder, lease.expiresAtMs);
    await this.#catchUp();
  }

  async #releaseLease(): Promise<void> {
    try {
      await this.#o.datastore.releaseLease(ROTATION_LEASE, this.#holder);
    } catch (error) {
      this.#o.logger.warn({ err: error }, 'could not give up the CA rotation lease; it runs out by itself');
    }
  }

  #buildBundle(slots: readonly CaSlot[], sequence: bigint | undefined): SpiffeBundle {
    const upstreamRoot = this.#o.upstream?.chain.at(-1);
    const x509Authorities = upstreamRoot
      ? [upstreamRoot]
      : slots.filter((s) => s.authority === 'x509' && s.certificateDer).map((s) => this.#certificate(s));
    const jwtAuthorities = new Map(
      slots
        .filter((s) => s.authority === 'jwt')
        .map((s) => [
          s.keyId,
          createPublicKey({ key: Buffer.from(s.publicKeyDer), format: 'der', type: 'spki' }),
        ]),
    );
    return new SpiffeBundle(this.#trustDomain, {
      x509Authorities,
      jwtAuthorities,
      refreshHintSeconds: this.#o.refreshHint,
      ...(sequence !== undefined ? { sequenceNumber: sequence } : {}),
    });
  }

  /** The bundle's keys alone, to tell whether a change alters what is published. */
  #contentOf(document: string): string {
    const parsed: unknown = JSON.parse(document);
    return JSON.stringify(parsed !== null && typeof parsed === 'object' ? Reflect.get(parsed, 'keys') : null);
  }

  /** The slot's CA certificate, parsed on first use. */
  #certificate(slot: CaSlot): X509Certificate {
    const der = slot.certificateDer;
    // Every x509 slot is journaled with its certificate; only jwt slots have none.
    if (der === undefined) throw new Error(`CA journal entry ${slot.keyId} has no certificate`);
    let certificate = this.#certificates.get(der);
    if (certificate === undefined) {
      certificate = new X509Certificate(der);
      this.#certificates.set(der, certificate);
    }
    return certificate;
  }

  async #signer(keyId: string): Promise<Signer> {
    const cached = this.#signers.get(keyId);
    if (cached) return cached;
    const signer = await this.#o.keyManager.signer(keyId, ALGORITHM[this.#o.keyType]);
    this.#signers.set(keyId, signer);
    return signer;
  }

  async #destroy(keyId: string): Promise<void> {
    this.#signers.delete(keyId);
    await this.#o.keyManager.destroyKey(keyId);
  }

  #find(kind: AuthorityKind, state: CaSlot['state']): CaSlot | undefined {
    return this.#slots.find((s) => s.authority === kind && s.state === state);
  }

  #active(kind: AuthorityKind): CaSlot {
    const active = this.#find(kind, 'active');
    if (!active) throw new CaError('ERR_CA_NOTHING_PREPARED', `the ${kind} authority has no active key yet`);
    return active;
  }

  #retired(kind: AuthorityKind, keyId: string): CaSlot {
    const slot = this.#slots.find((s) => s.authority === kind && s.keyId === keyId);
    if (!slot) {
      throw new CaError(
        'ERR_CA_AUTHORITY_NOT_FOUND',
        `no ${kind} authority with key id ${JSON.stringify(keyId)}; see "localauthority ${kind} show"`,
      );
    }
    if (slot.state !== 'old') {
      throw new CaError(
        'ERR_CA_AUTHORITY_IN_USE',
        `key ${keyId} is ${slot.state}; only a key that was replaced (old) can be tainted or revoked: prepare and activate a new one first`,
      );
    }
    return slot;
  }

  #serial<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.#queue.then(fn, fn);
    this.#queue = run.catch(() => undefined);
    return run;
  }
}

/** Oldest first, so listings read as a timeline. */
function byAge(a: CaSlot, b: CaSlot): number {
  return a.notBefore - b.notBefore || a.keyId.localeCompare(b.keyId);
}

function describe(slot: CaSlot): Record<string, unknown> {
  return {
    authority: slot.authority,
    slot: slot.slot,
    key_id: slot.keyId,
    state: slot.state,
    not_after: new Date(slot.notAfter * 1000).toISOString(),
  };
}

/** A {@link MintedX509Svid} whose leaf is parsed from `leaf` when `chain` is first read. */
function mintedSvid(
  leaf: Uint8Array,
  above: readonly X509Certificate[],
  expiresAt: number,
  authority: string,
): MintedX509Svid {
  let chain: X509Certificate[] | undefined;
  return {
    chainDer: [leaf, ...above.map((c) => new Uint8Array(c.raw))],
    get chain() {
      chain ??= [new X509Certificate(leaf), ...above];
      return chain;
    },
    expiresAt,
    authority,
  };
}
