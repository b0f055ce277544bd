/**
 * @module
 * The PKCS#11 key manager: keys generated on the token, signing through a pool of logged-in sessions
 * with pkcs11js's asynchronous C_Sign, and recovery when the token drops sessions, restarts or goes away.
 *
 * Threading: pkcs11js runs C_Sign and C_GenerateKeyPair callbacks on libuv's thread pool, so the library
 * is initialised with CKF_OS_LOCKING_OK (SoftHSM turns its own locking off otherwise) and a session only
 * ever carries one operation at a time. C_Login, C_OpenSession, C_FindObjects* and C_SignInit have no
 * asynchronous form; they run on the event loop and are kept off the hot path except C_SignInit, which
 * is cheap.
 *
 * Recovery: an error that means the session, the login or the library state is gone tears everything
 * down (C_Finalize), initialises again, logs in with a freshly read PIN, opens new sessions and re-finds
 * keys by id; no handle from before is reused. The failed operation is retried once on the new state.
 * While recovery keeps failing, operations fail fast with ERR_HSM_UNAVAILABLE and recovery is attempted
 * again at most once per `retryIntervalMs`; there is never a software fallback.
 */
import { createHash, type KeyObject } from 'node:crypto';
import { existsSync } from 'node:fs';
import { assertAlgorithmFits, assertKeyId, assertSchemeFits, signatureLength } from './algorithms.js';
import { ckrOf } from './ckr.js';
import { HsmError } from './errors.js';
import type {
  JoseAlgorithm,
  KeyManager,
  KeySigner,
  KeyType,
  ManagedKey,
  SignatureScheme,
} from './key-manager.js';
import { type Pin, readPin } from './pin.js';
import { type PKCS11, pkcs11js as p, type Template, type TokenInfo } from './pkcs11-binding.js';
import {
  generationTemplates,
  idBytes,
  privateKeyProblems,
  readPublicKey,
  signingMechanism,
} from './pkcs11-objects.js';
import { formatPkcs11Uri, type Pkcs11Uri } from './pkcs11-uri.js';
import { notFound, signerFor } from './software.js';

/** What the server may want to log or count. None of these ever carries the PIN. */
export type HsmEvent =
  | { readonly type: 'unavailable'; readonly ckr: string; readonly operation: string }
  | { readonly type: 'recovered'; readonly reason: string }
  | { readonly type: 'recovery-failed'; readonly error: HsmError }
  | { readonly type: 'key-changed'; readonly id: string };

/** Start-up milestones, for `hsm check` to report one line each. */
export type Pkcs11Step =
  | { readonly step: 'module'; readonly detail: string }
  | { readonly step: 'token'; readonly detail: string }
  | { readonly step: 'login'; readonly detail: string };

export interface Pkcs11Options {
  /** Called for recovery and key events; keep it fast, it runs on the signing path. */
  readonly onEvent?: (event: HsmEvent) => void;
  /** Called as start-up passes each milestone. */
  readonly onStep?: (step: Pkcs11Step) => void;
  /** Least time between two recovery attempts while the token is unavailable. Default 1000 ms. */
  readonly retryIntervalMs?: number;
}

/** A key on the token as found, with whatever is wrong with its protection. */
export interface InspectedKey {
  readonly id: string;
  readonly type: KeyType | undefined;
  readonly problems: readonly string[];
}

/** Return values after which sessions, login or object handles can no longer be trusted. */
const RECOVERABLE = new Set([
  'CKR_SESSION_HANDLE_INVALID',
  'CKR_SESSION_CLOSED',
  'CKR_DEVICE_ERROR',
  'CKR_DEVICE_REMOVED',
  'CKR_DEVICE_MEMORY',
  'CKR_TOKEN_NOT_PRESENT',
  'CKR_TOKEN_NOT_RECOGNIZED',
  'CKR_CRYPTOKI_NOT_INITIALIZED',
  'CKR_USER_NOT_LOGGED_IN',
  'CKR_OBJECT_HANDLE_INVALID',
  'CKR_KEY_HANDLE_INVALID',
  'CKR_GENERAL_ERROR',
]);

interface PoolSession {
  readonly handle: Buffer;
  readonly generation: number;
}

interface KeyRecord {
  readonly key: ManagedKey;
  readonly privateHandle: Buffer;
  readonly generation: number;
}

/** One outstanding native call's buffers; see `#pinned`. */
interface PinnedCall {
  readonly buffers: readonly unknown[];
}

type State = 'ready' | 'recovering' | 'down' | 'closed';

/** Library initialisations by module path in this process; C_Finalize only when the last user closes. */
const moduleUsers = new Map<string, number>();

function trimmed(text: string): string {
  return text.replace(/[\s\0]+$/, '');
}

function slotNumber(slot: Buffer): number {
  return Number(slot.readBigUInt64LE(0));
}

function describeToken(info: TokenInfo, slot: Buffer): string {
  return `token "${trimmed(info.label)}" (serial ${trimmed(info.serialNumber)}, ${trimmed(info.manufacturerID)} ${trimmed(info.model)}, slot ${slotNumber(slot)})`;
}

const ATTRIBUTE_NAMES: ReadonlyMap<number, string> = new Map(
  Object.entries(p as unknown as Record<string, unknown>)
    .filter((entry): entry is [string, number] => entry[0].startsWith('CKA_') && typeof entry[1] === 'number')
    .map(([name, value]) => [value, name]),
);

function attributeName(type: number): string {
  return ATTRIBUTE_NAMES.get(type) ?? `0x${type.toString(16)}`;
}

function attributeValue(value: unknown): string {
  if (Buffer.isBuffer(value)) return value.toString('hex');
  return String(value);
}

function sha256(text: string): string {
  return createHash('sha256').update(text).digest('hex');
}

function ignoreErrors(action: () => void): void {
  try {
    action();
  } catch {
    // Best-effort teardown: the state being torn down is exactly what may be broken.
  }
}

/** Loads the module, or says which path failed and what to do. */
function loadModule(path: string): PKCS11 {
  if (!existsSync(path)) {
    throw new HsmError(
      'ERR_HSM_MODULE_NOT_FOUND',
      `PKCS#11 module ${path} does not exist; fix module-path in the URI or install the HSM vendor's module (SoftHSM: apt install softhsm2)`,
    );
  }
  const module = new p.PKCS11();
  try {
    module.load(path);
  } catch (error) {
    throw new HsmError(
      'ERR_HSM_MODULE_NOT_FOUND',
      `PKCS#11 module ${path} could not be loaded (${error instanceof Error ? error.message : String(error)}); check that it is a PKCS#11 library for this architecture`,
      { cause: error },
    );
  }
  return module;
}

/** C_Initialize with OS locking; another user in this process may have initialised already. */
function initialise(module: PKCS11, path: string): void {
  try {
    module.C_Initialize({ flags: p.CKF_OS_LOCKING_OK });
  } catch (error) {
    const ckr = ckrOf(error);
    if (ckr === 'CKR_CRYPTOKI_ALREADY_INITIALIZED') return;
    throw new HsmError(
      'ERR_HSM_UNAVAILABLE',
      `C_Initialize of ${path} failed with ${ckr ?? String(error)}; check the module's configuration (SoftHSM: SOFTHSM2_CONF and its tokendir)`,
      { ckr, cause: error },
    );
  }
}

function findSlot(module: PKCS11, uri: Pkcs11Uri): { slot: Buffer; info: TokenInfo } {
  const seen: string[] = [];
  const matches: Array<{ slot: Buffer; info: TokenInfo }> = [];
  for (const slot of module.C_GetSlotList(true)) {
    const info = module.C_GetTokenInfo(slot);
    if ((info.flags & p.CKF_TOKEN_INITIALIZED) === 0) continue;
    seen.push(describeToken(info, slot));
    if (uri.token !== undefined && trimmed(info.label) !== uri.token) continue;
    if (uri.serial !== undefined && trimmed(info.serialNumber) !== uri.serial) continue;
    if (uri.slotId !== undefined && slotNumber(slot) !== uri.slotId) continue;
    matches.push({ slot, info });
  }
  const wanted = [
    uri.token === undefined ? undefined : `token=${uri.token}`,
    uri.serial === undefined ? undefined : `serial=${uri.serial}`,
    uri.slotId === undefined ? undefined : `slot-id=${uri.slotId}`,
  ]
    .filter((part) => part !== undefined)
    .join(';');
  const [match] = matches;
  if (match === undefined) {
    throw new HsmError(
      'ERR_HSM_TOKEN_NOT_FOUND',
      `no initialised token matches ${wanted} in ${uri.modulePath}; ${seen.length === 0 ? 'the module shows no tokens (initialise one, e.g. softhsm2-util --init-token)' : `present: ${seen.join('; ')}`}`,
    );
  }
  if (matches.length > 1) {
    throw new HsmError(
      'ERR_HSM_URI',
      `PKCS#11 URI: ${wanted} matches ${matches.length} tokens; add serial= to pick one`,
    );
  }
  return match;
}

function login(module: PKCS11, session: Buffer, pin: Pin | undefined, info: TokenInfo, uri: Pkcs11Uri): void {
  if (pin === undefined) {
    if ((info.flags & p.CKF_LOGIN_REQUIRED) !== 0) {
      throw new HsmError(
        'ERR_HSM_PIN_SOURCE',
        'the token requires a login but the URI has no pin-source; add pin-source=file:/path/to/pin or pin-source=env:NAME',
      );
    }
    return;
  }
  try {
    module.C_Login(session, p.CKU_USER, pin.reveal());
  } catch (error) {
    const ckr = ckrOf(error);
    // Login state belongs to the application, not the session: a second manager in this process may
    // already have logged in.
    if (ckr === 'CKR_USER_ALREADY_LOGGED_IN') return;
    const source =
      uri.pinSource?.kind === 'env' ? `env:${uri.pinSource.name}` : `file:${uri.pinSource?.path ?? ''}`;
    if (ckr === 'CKR_PIN_INCORRECT' || ckr === 'CKR_PIN_LEN_RANGE') {
      throw new HsmError(
        'ERR_HSM_PIN_INCORRECT',
        `the token rejected the PIN from pin-source ${source} (${ckr}); put the right user PIN there, and mind that repeated failures may lock the token`,
        { ckr },
      );
    }
    if (ckr === 'CKR_PIN_LOCKED' || ckr === 'CKR_PIN_EXPIRED') {
      throw new HsmError(
        'ERR_HSM_PIN_INCORRECT',
        `the token refuses the user PIN (${ckr}); the security officer must unlock or reset it`,
        { ckr },
      );
    }
    throw new HsmError('ERR_HSM_UNAVAILABLE', `C_Login failed with ${ckr ?? String(error)}`, {
      ckr,
      cause: error,
    });
  }
}

export class Pkcs11KeyManager implements KeyManager {
  readonly kind = 'pkcs11' as const;
  readonly uri: Pkcs11Uri;
  readonly #module: PKCS11;
  readonly #onEvent: (event: HsmEvent) => void;
  readonly #retryIntervalMs: number;

  #state: State = 'ready';
  #generation = 0;
  #slot: Buffer = Buffer.alloc(0);
  /** Long-lived session for the synchronous calls (find, attributes, destroy); never used by C_Sign. */
  #admin: Buffer = Buffer.alloc(0);
  #idle: PoolSession[] = [];
  #waiters: Array<(session: PoolSession | undefined) => void> = [];
  #busy = 0;
  #drained: (() => void) | undefined;
  #keys = new Map<string, KeyRecord>();
  /** Public keys seen per id, across recoveries, to notice a key replaced behind our back. */
  #seen = new Map<string, KeyObject>();
  /**
   * Buffers handed to an asynchronous native call. pkcs11js's worker reads and writes them on another
   * thread without holding a reference (pkcs11js #121), so they stay referenced here until it settles.
   */
  #pinned = new Set<PinnedCall>();
  #recovery: Promise<void> | undefined;
  #lastFailure: HsmError | undefined;
  #lastAttempt = 0;
  /** Hash of the PIN the token last rejected; the same PIN is not tried again, so the token is not locked. */
  #rejectedPin: string | undefined;

  private constructor(uri: Pkcs11Uri, module: PKCS11, options: Pkcs11Options) {
    this.uri = uri;
    this.#module = module;
    const hook = options.onEvent;
    // A logging hook that throws must not break signing or leave a recovery half done.
    this.#onEvent = (event) => {
      try {
        hook?.(event);
      } catch {
        // The event is lost; the operation it describes carries on.
      }
    };
    this.#retryIntervalMs = options.retryIntervalMs ?? 1000;
  }

  /**
   * Loads the module, finds the token, logs in and opens the session pool. Each way this can fail is
   * its own error code: ERR_HSM_MODULE_NOT_FOUND, ERR_HSM_TOKEN_NOT_FOUND, ERR_HSM_PIN_SOURCE,
   * ERR_HSM_PIN_INCORRECT.
   */
  static async open(uri: Pkcs11Uri, options: Pkcs11Options = {}): Promise<Pkcs11KeyManager> {
    const module = loadModule(uri.modulePath);
    const manager = new Pkcs11KeyManager(uri, module, options);
    moduleUsers.set(uri.modulePath, (moduleUsers.get(uri.modulePath) ?? 0) + 1);
    try {
      await manager.#connect(options);
    } catch (error) {
      manager.#release();
      throw error;
    }
    return manager;
  }

  /** 'ready' when signing works, 'down' while the token is unavailable, for health endpoints. */
  get state(): State {
    return this.#state;
  }

  async generateKey(id: string, type: KeyType): Promise<ManagedKey> {
    assertKeyId(id);
    return this.#run('generate', async () => {
      if (this.#findObjects(id).length > 0) {
        throw new HsmError(
          'ERR_HSM_KEY_EXISTS',
          `the token already holds objects with id "${id}"; pick another id`,
        );
      }
      const { mechanism, publicTemplate, privateTemplate } = generationTemplates(id, type);
      const session = await this.#acquire();
      const pinned: PinnedCall = { buffers: [mechanism, publicTemplate, privateTemplate] };
      this.#pinned.add(pinned);
      let generated: Buffer[];
      try {
        generated = await new Promise<Buffer[]>((resolve, reject) => {
          this.#module.C_GenerateKeyPair(
            session.handle,
            mechanism,
            publicTemplate,
            privateTemplate,
            (error, keys) => (error ? reject(error) : resolve([keys.privateKey, keys.publicKey])),
          );
        });
      } catch (error) {
        throw this.#refusedTemplate(error, id, type, publicTemplate, privateTemplate);
      } finally {
        this.#pinned.delete(pinned);
        this.#put(session);
      }
      try {
        const record = this.#lookUp(id);
        if (record === undefined) {
          throw new HsmError(
            'ERR_HSM_KEY_ATTRIBUTES',
            `key "${id}" was generated but cannot be found again by id and label`,
          );
        }
        return record.key;
      } catch (error) {
        // A key refused on read-back must not stay on the token: a later lookup could take it, or an
        // operator would have to find and remove it by hand. Only the two objects made here go.
        this.#destroyGenerated(id, generated, error);
        throw error;
      }
    });
  }

  /**
   * A failed C_GenerateKeyPair on a token that still answers is a refusal of what was asked (some
   * modules, tpm2-pkcs11 among them, say CKR_GENERAL_ERROR for a template they dislike), not an outage:
   * it becomes ERR_HSM_KEY_TEMPLATE with the CKR and the attributes sent. When the token does not answer
   * either, the error goes on to recovery as before.
   */
  #refusedTemplate(
    error: unknown,
    id: string,
    type: KeyType,
    publicTemplate: Template,
    privateTemplate: Template,
  ): unknown {
    const ckr = ckrOf(error);
    if (ckr === undefined) return error;
    try {
      this.#module.C_GetSessionInfo(this.#admin);
    } catch {
      return error;
    }
    const names = (template: Template) =>
      template
        .filter((attribute) => attribute.type !== p.CKA_ID && attribute.type !== p.CKA_LABEL)
        .map((attribute) => `${attributeName(attribute.type)}=${attributeValue(attribute.value)}`)
        .join(', ');
    return new HsmError(
      'ERR_HSM_KEY_TEMPLATE',
      `the token refused to generate ${type} key "${id}" with ${ckr}, while it still answers: it does not accept this key type or one of the attributes (public: ${names(publicTemplate)}; private: ${names(privateTemplate)}); the module's own log names the attribute. Choose another ca_key_type or token`,
      { ckr, cause: error },
    );
  }

  /** Destroys the objects of a refused generation; if the token will not, says what is left to do. */
  #destroyGenerated(id: string, handles: readonly Buffer[], refusal: unknown): void {
    const failures: string[] = [];
    for (const handle of handles) {
      try {
        this.#module.C_DestroyObject(this.#admin, handle);
      } catch (error) {
        failures.push(ckrOf(error) ?? String(error));
      }
    }
    if (failures.length === 0) return;
    const reason = refusal instanceof Error ? refusal.message : String(refusal);
    throw new HsmError(
      'ERR_HSM_KEY_ATTRIBUTES',
      `${reason}; destroying the objects just generated failed too (${failures.join(', ')}): remove them with "ironroot-server hsm keys destroy ${id} --yes" once the token answers`,
      { cause: refusal },
    );
  }

  async getKey(id: string): Promise<ManagedKey | undefined> {
    assertKeyId(id);
    return this.#run('find', async () => this.#lookUp(id)?.key);
  }

  async listKeys(): Promise<ManagedKey[]> {
    const inspected = await this.inspectKeys();
    const keys: ManagedKey[] = [];
    for (const { id, problems } of inspected) {
      if (problems.length > 0) continue;
      const key = await this.getKey(id);
      if (key !== undefined) keys.push(key);
    }
    return keys;
  }

  /**
   * Every private key on the token with what is wrong with it (for `hsm check` and `hsm keys list`);
   * listKeys returns only the sound ones.
   */
  async inspectKeys(): Promise<InspectedKey[]> {
    return this.#run('list', async () => {
      const handles = this.#find([
        { type: p.CKA_CLASS, value: p.CKO_PRIVATE_KEY },
        { type: p.CKA_TOKEN, value: true },
      ]);
      return handles.map((handle) => this.#inspect(handle)).sort((a, b) => a.id.localeCompare(b.id));
    });
  }

  /**
   * The private key labelled `id` with what is wrong with it, looking at no other key on the token (a
   * shared token may hold anyone's); undefined when there is none.
   */
  async inspectKey(id: string): Promise<InspectedKey | undefined> {
    return this.#run('list', async () => {
      const handles = this.#find([
        { type: p.CKA_CLASS, value: p.CKO_PRIVATE_KEY },
        { type: p.CKA_TOKEN, value: true },
        { type: p.CKA_LABEL, value: id },
      ]);
      const [first] = handles;
      if (first === undefined) return undefined;
      const inspected = this.#inspect(first);
      if (handles.length === 1) return inspected;
      return {
        ...inspected,
        problems: [
          ...inspected.problems,
          `${handles.length} private keys carry this label; destroy the extra ones`,
        ],
      };
    });
  }

  #inspect(handle: Buffer): InspectedKey {
    const module = this.#module;
    const [label, cid] = module.C_GetAttributeValue(this.#admin, handle, [
      { type: p.CKA_LABEL },
      { type: p.CKA_ID },
    ]);
    const id = label?.value.toString('utf8') ?? '';
    const problems = privateKeyProblems(module, this.#admin, handle);
    if (cid === undefined || !cid.value.equals(idBytes(id)))
      problems.push(`CKA_ID does not equal the label "${id}"`);
    const publicHandle = this.#findObjects(id, p.CKO_PUBLIC_KEY)[0];
    const publicKey =
      publicHandle === undefined ? undefined : readPublicKey(module, this.#admin, publicHandle);
    if (publicKey === undefined) problems.push('no public-key object of a supported type with the same id');
    return { id, type: publicKey?.type, problems };
  }

  async sign(id: string, scheme: SignatureScheme, data: Uint8Array): Promise<Uint8Array> {
    assertKeyId(id);
    const digest = createHash(scheme.hash).update(data).digest();
    return this.#run('sign', async () => {
      // The session comes first and the key handle after it, with no await in between: a handle looked
      // up before waiting for a session could belong to a generation that a recovery has since ended.
      const session = await this.#acquire();
      let pinned: PinnedCall | undefined;
      try {
        const record = this.#lookUp(id);
        if (record === undefined) throw notFound(id, `PKCS#11 (${formatPkcs11Uri(this.uri)})`);
        assertSchemeFits(id, record.key.type, scheme);
        const { mechanism, input } = signingMechanism(scheme, digest);
        const output = Buffer.alloc(signatureLength(record.key.type));
        pinned = { buffers: [mechanism, input, output] };
        this.#pinned.add(pinned);
        this.#module.C_SignInit(session.handle, mechanism, record.privateHandle);
        return await new Promise<Uint8Array>((resolve, reject) => {
          this.#module.C_Sign(session.handle, input, output, (error, signature) =>
            error ? reject(error) : resolve(new Uint8Array(signature)),
          );
        });
      } finally {
        if (pinned !== undefined) this.#pinned.delete(pinned);
        this.#put(session);
      }
    });
  }

  async signer(id: string, algorithm: JoseAlgorithm): Promise<KeySigner> {
    const key = await this.getKey(id);
    if (key === undefined) throw notFound(id, `PKCS#11 (${formatPkcs11Uri(this.uri)})`);
    assertAlgorithmFits(id, key.type, algorithm);
    return signerFor(this, key, algorithm);
  }

  async destroyKey(id: string): Promise<void> {
    assertKeyId(id);
    await this.#run('destroy', async () => {
      const handles = this.#findObjects(id);
      if (handles.length === 0) throw notFound(id, `PKCS#11 (${formatPkcs11Uri(this.uri)})`);
      for (const handle of handles) this.#module.C_DestroyObject(this.#admin, handle);
      this.#keys.delete(id);
      this.#seen.delete(id);
    });
  }

  async close(): Promise<void> {
    if (this.#state === 'closed') return;
    await this.#recovery?.catch(() => {});
    this.#state = 'closed';
    await this.#drain();
    this.#wakeWaiters();
    this.#release();
  }

  /** Runs an operation; on a recoverable error, recovers and retries it once on fresh state. */
  async #run<T>(operation: string, action: () => Promise<T>): Promise<T> {
    await this.#ensureReady();
    try {
      return await action();
    } catch (error) {
      const ckr = ckrOf(error);
      if (ckr === undefined || !RECOVERABLE.has(ckr)) throw this.#wrap(error, operation);
      this.#onEvent({ type: 'unavailable', ckr, operation });
      await this.#recover(ckr);
    }
    try {
      return await action();
    } catch (error) {
      const ckr = ckrOf(error);
      if (ckr !== undefined && RECOVERABLE.has(ckr)) {
        this.#markDown(
          new HsmError('ERR_HSM_UNAVAILABLE', `the HSM failed again right after recovery (${ckr})`, {
            ckr,
            cause: error,
          }),
        );
        throw this.#unavailable();
      }
      throw this.#wrap(error, operation);
    }
  }

  #wrap(error: unknown, operation: string): unknown {
    const ckr = ckrOf(error);
    if (ckr === undefined) return error;
    return new HsmError('ERR_HSM_OPERATION_FAILED', `PKCS#11 ${operation} failed with ${ckr}`, {
      ckr,
      cause: error,
    });
  }

  async #ensureReady(): Promise<void> {
    if (this.#state === 'closed') {
      throw new HsmError('ERR_HSM_CLOSED', 'the PKCS#11 key manager is closed; open a new one');
    }
    if (this.#state === 'recovering') await this.#recovery;
    if (this.#state !== 'down') return;
    if (Date.now() - this.#lastAttempt < this.#retryIntervalMs) throw this.#unavailable();
    await this.#recover(this.#lastFailure?.ckr ?? 'retry');
  }

  #unavailable(): HsmError {
    const cause = this.#lastFailure;
    return new HsmError(
      'ERR_HSM_UNAVAILABLE',
      `the HSM is unavailable (${cause?.message ?? 'unknown cause'}); signing resumes by itself once the token is back, and nothing is signed in software meanwhile`,
      { ckr: cause?.ckr, cause },
    );
  }

  #markDown(error: HsmError): void {
    this.#state = 'down';
    this.#lastFailure = error;
    this.#lastAttempt = Date.now();
    this.#onEvent({ type: 'recovery-failed', error });
  }

  /** One recovery at a time; everyone who hits a dead session waits for the same one. */
  #recover(reason: string): Promise<void> {
    if (this.#recovery === undefined) {
      this.#recovery = this.#reconnect(reason).finally(() => {
        this.#recovery = undefined;
      });
    }
    return this.#recovery;
  }

  async #reconnect(reason: string): Promise<void> {
    this.#state = 'recovering';
    this.#lastAttempt = Date.now();
    // Everything from the old generation is dead: idle sessions are dropped, busy ones are dropped when
    // their call settles, key handles are looked up again.
    this.#generation += 1;
    this.#idle = [];
    this.#keys.clear();
    // C_Finalize must not run while a worker thread is still inside the library.
    await this.#drain();
    ignoreErrors(() => this.#module.C_Finalize());
    try {
      await this.#connect({});
    } catch (error) {
      const failure =
        error instanceof HsmError
          ? error
          : new HsmError(
              'ERR_HSM_UNAVAILABLE',
              `re-initialising the HSM failed (${ckrOf(error) ?? String(error)})`,
              {
                ckr: ckrOf(error),
                cause: error,
              },
            );
      this.#markDown(failure);
      this.#wakeWaiters();
      throw this.#unavailable();
    }
    this.#lastFailure = undefined;
    this.#onEvent({ type: 'recovered', reason });
    this.#wakeWaiters();
  }

  /** Initialise, find the token, log in (with the PIN read afresh), open the pool. */
  async #connect(options: Pkcs11Options): Promise<void> {
    const uri = this.uri;
    initialise(this.#module, uri.modulePath);
    if (options.onStep !== undefined) {
      const library = this.#module.C_GetInfo();
      options.onStep({
        step: 'module',
        detail: `${uri.modulePath} (${trimmed(library.manufacturerID)}, ${trimmed(library.libraryDescription)} ${library.libraryVersion.major}.${library.libraryVersion.minor})`,
      });
    }
    const { slot, info } = findSlot(this.#module, uri);
    options.onStep?.({ step: 'token', detail: describeToken(info, slot) });
    // Read afresh on every connect, so a PIN corrected in the pin file is picked up by recovery.
    const pin = uri.pinSource === undefined ? undefined : await readPin(uri.pinSource);
    if (this.#state === 'closed') throw new HsmError('ERR_HSM_CLOSED', 'the PKCS#11 key manager was closed');
    const flags = p.CKF_SERIAL_SESSION | p.CKF_RW_SESSION;
    const admin = this.#module.C_OpenSession(slot, flags);
    const idle: PoolSession[] = [];
    try {
      if (pin !== undefined && this.#rejectedPin === sha256(pin.reveal())) {
        throw new HsmError(
          'ERR_HSM_PIN_INCORRECT',
          'the PIN in the pin-source is the one the token rejected before; not trying it again so the token does not lock. Put the right user PIN there',
          { ckr: 'CKR_PIN_INCORRECT' },
        );
      }
      try {
        login(this.#module, admin, pin, info, uri);
      } catch (error) {
        if (error instanceof HsmError && error.code === 'ERR_HSM_PIN_INCORRECT' && pin !== undefined) {
          this.#rejectedPin = sha256(pin.reveal());
        }
        throw error;
      }
      this.#rejectedPin = undefined;
      options.onStep?.({
        step: 'login',
        detail: pin === undefined ? 'no login required' : 'user PIN accepted',
      });
      // Opened one after another: a token with a session limit fails cleanly on the first one too many.
      for (let i = 0; i < uri.maxSessions; i++) {
        idle.push({ handle: this.#module.C_OpenSession(slot, flags), generation: this.#generation });
      }
      this.#slot = slot;
      this.#admin = admin;
      this.#idle = idle;
      this.#state = 'ready';
    } catch (error) {
      // Only our own sessions: C_CloseAllSessions would also end those of other users in this process.
      for (const session of [admin, ...idle.map((s) => s.handle)]) {
        ignoreErrors(() => this.#module.C_CloseSession(session));
      }
      throw error;
    }
  }

  /** Closes our sessions and, when we are the library's last user in this process, finalises it. */
  #release(): void {
    this.#state = 'closed';
    if (this.#slot.length > 0) {
      for (const session of [this.#admin, ...this.#idle.map((s) => s.handle)]) {
        ignoreErrors(() => this.#module.C_CloseSession(session));
      }
    }
    this.#idle = [];
    const users = (moduleUsers.get(this.uri.modulePath) ?? 1) - 1;
    if (users > 0) {
      moduleUsers.set(this.uri.modulePath, users);
      return;
    }
    moduleUsers.delete(this.uri.modulePath);
    ignoreErrors(() => this.#module.C_Finalize());
    ignoreErrors(() => this.#module.close());
  }

  /** A session for one operation; waits while all are busy. */
  async #acquire(): Promise<PoolSession> {
    for (;;) {
      if (this.#state === 'closed') throw new HsmError('ERR_HSM_CLOSED', 'the PKCS#11 key manager is closed');
      if (this.#state === 'down') throw this.#unavailable();
      if (this.#state === 'ready') {
        const session = this.#idle.pop();
        if (session !== undefined) {
          this.#busy += 1;
          return session;
        }
      }
      const handed = await new Promise<PoolSession | undefined>((resolve) => this.#waiters.push(resolve));
      if (handed !== undefined) return handed;
    }
  }

  /** Returns a session: straight to a waiter if there is one, dropped if it belongs to a dead generation. */
  #put(session: PoolSession): void {
    if (session.generation === this.#generation && this.#state === 'ready') {
      const waiter = this.#waiters.shift();
      if (waiter !== undefined) {
        waiter(session);
        return;
      }
      this.#idle.push(session);
    }
    this.#busy -= 1;
    if (this.#busy === 0) this.#drained?.();
  }

  #drain(): Promise<void> {
    if (this.#busy === 0) return Promise.resolve();
    return new Promise((resolve) => {
      this.#drained = () => {
        this.#drained = undefined;
        resolve();
      };
    });
  }

  /** Sends every waiter back round the acquire loop, to take a new session or fail. */
  #wakeWaiters(): void {
    const waiters = this.#waiters;
    this.#waiters = [];
    for (const waiter of waiters) waiter(undefined);
  }

  #find(template: Array<{ type: number; value?: number | boolean | string | Buffer }>): Buffer[] {
    const module = this.#module;
    module.C_FindObjectsInit(this.#admin, template);
    try {
      const handles: Buffer[] = [];
      for (;;) {
        const batch = module.C_FindObjects(this.#admin, 32);
        handles.push(...batch);
        if (batch.length < 32) return handles;
      }
    } finally {
      module.C_FindObjectsFinal(this.#admin);
    }
  }

  /** Token objects that carry `id` as both CKA_ID and CKA_LABEL, optionally of one class. */
  #findObjects(id: string, objectClass?: number): Buffer[] {
    return this.#find([
      { type: p.CKA_TOKEN, value: true },
      { type: p.CKA_ID, value: idBytes(id) },
      { type: p.CKA_LABEL, value: id },
      ...(objectClass === undefined ? [] : [{ type: p.CKA_CLASS, value: objectClass }]),
    ]);
  }

  /** The key with this id in the current generation, checked; found on the token when not cached. */
  #lookUp(id: string): KeyRecord | undefined {
    const cached = this.#keys.get(id);
    if (cached !== undefined && cached.generation === this.#generation) return cached;
    const privates = this.#findObjects(id, p.CKO_PRIVATE_KEY);
    const [privateHandle] = privates;
    if (privateHandle === undefined) return undefined;
    if (privates.length > 1) {
      throw new HsmError(
        'ERR_HSM_KEY_ATTRIBUTES',
        `the token holds ${privates.length} private keys with id "${id}"; destroy the extra ones`,
      );
    }
    const problems = privateKeyProblems(this.#module, this.#admin, privateHandle);
    if (problems.length > 0) {
      throw new HsmError(
        'ERR_HSM_KEY_ATTRIBUTES',
        `key "${id}" is not protected as ironroot requires (${problems.join('; ')}); generate a new key with ironroot-server hsm keys generate`,
      );
    }
    const [publicHandle] = this.#findObjects(id, p.CKO_PUBLIC_KEY);
    const publicKey =
      publicHandle === undefined ? undefined : readPublicKey(this.#module, this.#admin, publicHandle);
    if (publicHandle === undefined || publicKey === undefined) {
      throw new HsmError(
        'ERR_HSM_KEY_ATTRIBUTES',
        `key "${id}" has no public-key object of a supported type (EC P-256/P-384, RSA 2048-4096) beside it`,
      );
    }
    const previous = this.#seen.get(id);
    if (previous !== undefined && !previous.equals(publicKey.publicKey))
      this.#onEvent({ type: 'key-changed', id });
    this.#seen.set(id, publicKey.publicKey);
    const record: KeyRecord = {
      key: { id, type: publicKey.type, publicKey: publicKey.publicKey },
      privateHandle,
      generation: this.#generation,
    };
    this.#keys.set(id, record);
    return record;
  }
}
