/**
 * The TPM 2.0 command set ironroot's agent needs (Part 3), over any `TpmTransport`.
 *
 * Each method marshals one command, sends it, checks the response code (retrying the warnings
 * that mean "send it again") and unmarshals the answer. Methods never leave handles behind on
 * their own; callers that create handles (CreatePrimary, Load, StartAuthSession) flush them in a
 * `finally`, which `withHandle` makes easy.
 *
 * @module
 */
import { randomBytes } from 'node:crypto';
import { parseAttest, type TpmsAttest } from './codec/attest.js';
import { TpmReader, TpmWriter } from './codec/buffer.js';
import { type CapabilityData, readCapabilityData } from './codec/capability.js';
import { commandName, TPM_ALG, TPM_CAP, TPM_CC, TPM_PT, TPM_RH, TPM_SE, TPM_ST } from './codec/constants.js';
import { digestSize } from './codec/hash.js';
import { type NvPublic, readNvPublic } from './codec/nv.js';
import {
  type PcrSelection,
  readDigestList,
  readPcrSelections,
  writeDigestList,
  writePcrSelections,
} from './codec/pcr.js';
import { marshalPublic, type ParsedPublic, parsePublicArea, type TpmtPublic } from './codec/public.js';
import { marshalSignature, readSignature, type TpmtSignature } from './codec/signature.js';
import { TpmError } from './errors.js';
import { RETRYABLE_RCS, responseError } from './rc.js';
import { type AuthSession, passwordSession, writeAuth } from './session.js';
import { openTransport, type TpmTransport } from './transport/index.js';

export interface TpmOptions {
  /** Per-command timeout. Hardware TPMs are slow; the default is 30 s. */
  readonly timeoutMs?: number;
  /** Timeout for commands that generate keys (CreatePrimary, Create); default 120 s. */
  readonly keyGenerationTimeoutMs?: number;
  /** Delays before resending after TPM_RC_RETRY/YIELDED/TESTING; default 10, 50, 200, 1000 ms. */
  readonly retryDelaysMs?: readonly number[];
}

interface CommandSpec {
  readonly cc: number;
  /** Handles in the handle area; those with an `AuthSession` are authorized by it, in order. */
  readonly handles?: readonly number[];
  readonly auths?: readonly AuthSession[];
  readonly params?: Uint8Array;
  /** Number of handles in the response's handle area. */
  readonly responseHandles?: number;
  readonly timeoutMs?: number;
}

interface CommandResult {
  readonly handles: number[];
  readonly params: TpmReader;
}

/** TPMT_SIG_SCHEME for Quote/Certify: NULL uses the key's own scheme. */
export interface SigScheme {
  readonly scheme: number;
  readonly hashAlg: number;
}

export const KEY_SCHEME: SigScheme = { scheme: TPM_ALG.NULL, hashAlg: TPM_ALG.NULL };

export interface CreatedObject {
  /** TPM2B_PRIVATE as the TPM returned it (size included), for `load`. */
  readonly privateBlob: Uint8Array;
  /** TPM2B_PUBLIC as the TPM returned it (size included), for `load` and for verifiers. */
  readonly publicBlob: Uint8Array;
  readonly public: ParsedPublic;
}

export interface LoadedObject {
  readonly handle: number;
  readonly public: ParsedPublic;
  readonly name: Uint8Array;
}

export interface PcrReadResult {
  readonly updateCounter: number;
  readonly selection: PcrSelection[];
  readonly digests: Uint8Array[];
}

export interface SignedAttestation {
  /** TPM2B_ATTEST contents: the TPMS_ATTEST bytes that were signed. */
  readonly attestBytes: Uint8Array;
  readonly attest: TpmsAttest;
  readonly signatureBytes: Uint8Array;
  readonly signature: TpmtSignature;
}

const EMPTY = new Uint8Array();

export class Tpm {
  readonly transport: TpmTransport;
  readonly #timeoutMs: number;
  readonly #keyGenerationTimeoutMs: number;
  readonly #retryDelaysMs: readonly number[];
  #queue: Promise<unknown> = Promise.resolve();

  constructor(transport: TpmTransport, options: TpmOptions = {}) {
    this.transport = transport;
    this.#timeoutMs = options.timeoutMs ?? 30_000;
    this.#keyGenerationTimeoutMs = options.keyGenerationTimeoutMs ?? 120_000;
    this.#retryDelaysMs = options.retryDelaysMs ?? [10, 50, 200, 1000];
  }

  /** Opens the TPM named by a TCTI string (see `openTransport`). */
  static async open(tcti: string, options: TpmOptions = {}): Promise<Tpm> {
    return new Tpm(await openTransport(tcti, options.timeoutMs), options);
  }

  async close(): Promise<void> {
    await this.#queue.catch(() => undefined);
    await this.transport.close();
  }

  /** Sends one command; commands are queued so they never interleave on the transport. */
  async execute(spec: CommandSpec): Promise<CommandResult> {
    const run = this.#queue.then(
      () => this.#executeWithRetry(spec),
      () => this.#executeWithRetry(spec),
    );
    this.#queue = run.catch(() => undefined);
    return run;
  }

  async #executeWithRetry(spec: CommandSpec): Promise<CommandResult> {
    const command = marshalCommand(spec);
    const name = commandName(spec.cc);
    for (let attempt = 0; ; attempt++) {
      const response = await this.transport.send(command, spec.timeoutMs ?? this.#timeoutMs);
      const r = new TpmReader(response);
      const tag = r.u16('response tag');
      const size = r.u32('responseSize');
      const rc = r.u32('responseCode');
      if (size !== response.byteLength) {
        throw new TpmError(
          'ERR_TPM_MALFORMED',
          `${name}: response size field ${size} differs from ${response.byteLength} bytes received`,
        );
      }
      if (rc !== 0) {
        const delay = this.#retryDelaysMs[attempt];
        if (RETRYABLE_RCS.has(rc) && delay !== undefined) {
          await new Promise((resolve) => setTimeout(resolve, delay));
          continue;
        }
        throw responseError(rc, name);
      }
      return parseResponse(r, tag, spec.responseHandles ?? 0, name);
    }
  }

  async getCapability(
    capability: number,
    property: number,
    count: number,
  ): Promise<{ moreData: boolean; data: CapabilityData }> {
    const params = new TpmWriter().u32(capability).u32(property).u32(count).finish();
    const { params: r } = await this.execute({ cc: TPM_CC.GetCapability, params });
    const moreData = r.u8('moreData') === 1;
    const data = readCapabilityData(r);
    r.end('TPM2_GetCapability response');
    return { moreData, data };
  }

  /** All handles of one type (`TPM_HT.*` shifted to the top byte), following `moreData`. */
  async getHandles(handleType: number): Promise<number[]> {
    const out: number[] = [];
    let next = (handleType << 24) >>> 0;
    const last = (((handleType + 1) << 24) >>> 0) - 1;
    for (;;) {
      const { moreData, data } = await this.getCapability(TPM_CAP.HANDLES, next, 256);
      if (data.capability !== TPM_CAP.HANDLES) throw unexpected('GetCapability(HANDLES)', data.capability);
      const handles = data.handles.filter((h) => h >= next && h <= last);
      out.push(...handles);
      const highest = handles.at(-1);
      if (!moreData || highest === undefined) return out;
      next = highest + 1;
    }
  }

  /** TPM properties from `first` on, following `moreData` until `last`. */
  async getProperties(first: number, last: number): Promise<Map<number, number>> {
    const out = new Map<number, number>();
    let next = first;
    for (;;) {
      const { moreData, data } = await this.getCapability(TPM_CAP.TPM_PROPERTIES, next, last - next + 1);
      if (data.capability !== TPM_CAP.TPM_PROPERTIES) {
        throw unexpected('GetCapability(TPM_PROPERTIES)', data.capability);
      }
      for (const p of data.properties) if (p.property <= last) out.set(p.property, p.value);
      const highest = data.properties.at(-1)?.property;
      if (!moreData || highest === undefined || highest >= last) return out;
      next = highest + 1;
    }
  }

  /** One TPM property, or undefined when the TPM does not report it. */
  async getProperty(property: number): Promise<number | undefined> {
    return (await this.getProperties(property, property)).get(property);
  }

  /** The allocated PCR banks and the PCRs in each. */
  async getPcrBanks(): Promise<PcrSelection[]> {
    const { data } = await this.getCapability(TPM_CAP.PCRS, 0, 1);
    if (data.capability !== TPM_CAP.PCRS) throw unexpected('GetCapability(PCRS)', data.capability);
    return data.pcrs;
  }

  async getRandom(bytes: number): Promise<Uint8Array> {
    const { params: r } = await this.execute({
      cc: TPM_CC.GetRandom,
      params: new TpmWriter().u16(bytes).finish(),
    });
    return r.tpm2b('randomBytes');
  }

  /** Creates a primary key from `template` in `hierarchy`; flush the handle when done. */
  async createPrimary(
    hierarchy: number,
    template: TpmtPublic,
    hierarchyAuth: AuthSession = passwordSession(),
  ): Promise<LoadedObject> {
    const params = creationParams(template);
    const { handles, params: r } = await this.execute({
      cc: TPM_CC.CreatePrimary,
      handles: [hierarchy],
      auths: [hierarchyAuth],
      params,
      responseHandles: 1,
      timeoutMs: this.#keyGenerationTimeoutMs,
    });
    const pub = parsePublicArea(r.tpm2b('outPublic'));
    skipCreationOutputs(r);
    const name = r.tpm2b('name');
    r.end('TPM2_CreatePrimary response');
    return { handle: first(handles), public: pub, name };
  }

  /** Creates an ordinary key under `parent`; returns its blobs (nothing is loaded). */
  async create(parent: number, parentAuth: AuthSession, template: TpmtPublic): Promise<CreatedObject> {
    const { params: r } = await this.execute({
      cc: TPM_CC.Create,
      handles: [parent],
      auths: [parentAuth],
      params: creationParams(template),
      timeoutMs: this.#keyGenerationTimeoutMs,
    });
    const privateBody = r.tpm2b('outPrivate');
    const publicBody = r.tpm2b('outPublic');
    skipCreationOutputs(r);
    r.end('TPM2_Create response');
    return {
      privateBlob: new TpmWriter().tpm2b(privateBody).finish(),
      publicBlob: new TpmWriter().tpm2b(publicBody).finish(),
      public: parsePublicArea(publicBody),
    };
  }

  /** Loads blobs from `create` under `parent`; flush the handle when done. */
  async load(
    parent: number,
    parentAuth: AuthSession,
    privateBlob: Uint8Array,
    publicBlob: Uint8Array,
  ): Promise<LoadedObject> {
    const pub = parsePublicArea(new TpmReader(publicBlob).tpm2b('TPM2B_PUBLIC'));
    const { handles, params: r } = await this.execute({
      cc: TPM_CC.Load,
      handles: [parent],
      auths: [parentAuth],
      params: new TpmWriter().bytes(privateBlob).bytes(publicBlob).finish(),
      responseHandles: 1,
    });
    const name = r.tpm2b('name');
    r.end('TPM2_Load response');
    return { handle: first(handles), public: pub, name };
  }

  async readPublic(handle: number): Promise<LoadedObject & { qualifiedName: Uint8Array }> {
    const { params: r } = await this.execute({ cc: TPM_CC.ReadPublic, handles: [handle] });
    const pub = parsePublicArea(r.tpm2b('outPublic'));
    const name = r.tpm2b('name');
    const qualifiedName = r.tpm2b('qualifiedName');
    r.end('TPM2_ReadPublic response');
    return { handle, public: pub, name, qualifiedName };
  }

  async flushContext(handle: number): Promise<void> {
    await this.execute({ cc: TPM_CC.FlushContext, params: new TpmWriter().u32(handle).finish() });
  }

  /**
   * Makes `objectHandle` persistent at `persistentHandle`, or (given a persistent handle as both)
   * removes it. `auth` is TPM_RH_OWNER or TPM_RH_PLATFORM.
   */
  async evictControl(
    auth: number,
    authSession: AuthSession,
    objectHandle: number,
    persistentHandle: number,
  ): Promise<void> {
    await this.execute({
      cc: TPM_CC.EvictControl,
      handles: [auth, objectHandle],
      auths: [authSession],
      params: new TpmWriter().u32(persistentHandle).finish(),
    });
  }

  async nvReadPublic(index: number): Promise<{ nvPublic: NvPublic; name: Uint8Array }> {
    const { params: r } = await this.execute({ cc: TPM_CC.NV_ReadPublic, handles: [index] });
    const nvPublic = readNvPublic(r);
    const name = r.tpm2b('nvName');
    r.end('TPM2_NV_ReadPublic response');
    return { nvPublic, name };
  }

  /**
   * Reads `size` bytes of an NV index in chunks of TPM_PT_NV_BUFFER_MAX. EK certificate indices
   * are read with the index itself as the auth handle and an empty password, as tpm2-tools do.
   */
  async nvRead(
    index: number,
    size: number,
    options: { authHandle?: number; auth?: AuthSession; offset?: number } = {},
  ): Promise<Uint8Array> {
    const maxChunk = (await this.getProperty(TPM_PT.NV_BUFFER_MAX)) ?? 512;
    const authHandle = options.authHandle ?? index;
    const auth = options.auth ?? passwordSession();
    const out = new Uint8Array(size);
    const start = options.offset ?? 0;
    for (let done = 0; done < size; ) {
      const chunk = Math.min(maxChunk, size - done);
      const { params: r } = await this.execute({
        cc: TPM_CC.NV_Read,
        handles: [authHandle, index],
        auths: [auth],
        params: new TpmWriter()
          .u16(chunk)
          .u16(start + done)
          .finish(),
      });
      const data = r.tpm2b('data');
      r.end('TPM2_NV_Read response');
      if (data.byteLength !== chunk) {
        throw new TpmError(
          'ERR_TPM_UNEXPECTED',
          `NV_Read returned ${data.byteLength} bytes, asked for ${chunk}`,
        );
      }
      out.set(data, done);
      done += chunk;
    }
    return out;
  }

  /** One PCR_Read call; the TPM may return fewer PCRs than asked (at most 8 digests). */
  async pcrReadOnce(selection: readonly PcrSelection[]): Promise<PcrReadResult> {
    const w = new TpmWriter();
    writePcrSelections(w, selection);
    const { params: r } = await this.execute({ cc: TPM_CC.PCR_Read, params: w.finish() });
    const updateCounter = r.u32('pcrUpdateCounter');
    const selectionOut = readPcrSelections(r);
    const digests = readDigestList(r);
    r.end('TPM2_PCR_Read response');
    return { updateCounter, selection: selectionOut, digests };
  }

  async quote(
    signHandle: number,
    signAuth: AuthSession,
    qualifyingData: Uint8Array,
    selection: readonly PcrSelection[],
    scheme: SigScheme = KEY_SCHEME,
  ): Promise<SignedAttestation> {
    const w = new TpmWriter().tpm2b(qualifyingData);
    writeSigScheme(w, scheme);
    writePcrSelections(w, selection);
    const { params: r } = await this.execute({
      cc: TPM_CC.Quote,
      handles: [signHandle],
      auths: [signAuth],
      params: w.finish(),
    });
    return readSignedAttestation(r, 'TPM2_Quote');
  }

  /** Starts an unbound, unsalted session (policy by default); flush it when done. */
  async startAuthSession(type: number = TPM_SE.POLICY, authHash: number = TPM_ALG.SHA256): Promise<number> {
    const nonceCaller = new Uint8Array(randomBytes(digestSize(authHash)));
    const params = new TpmWriter()
      .tpm2b(nonceCaller)
      .tpm2b(EMPTY)
      .u8(type)
      .u16(TPM_ALG.NULL)
      .u16(authHash)
      .finish();
    const { handles } = await this.execute({
      cc: TPM_CC.StartAuthSession,
      handles: [TPM_RH.NULL, TPM_RH.NULL],
      params,
      responseHandles: 1,
    });
    return first(handles);
  }

  /** PolicySecret(authHandle) into `session`, with no nonce, cpHash, policyRef or expiry. */
  async policySecret(authHandle: number, auth: AuthSession, session: number): Promise<void> {
    const params = new TpmWriter().tpm2b(EMPTY).tpm2b(EMPTY).tpm2b(EMPTY).u32(0).finish();
    await this.execute({ cc: TPM_CC.PolicySecret, handles: [authHandle, session], auths: [auth], params });
  }

  async policyOr(session: number, digests: readonly Uint8Array[]): Promise<void> {
    const w = new TpmWriter();
    writeDigestList(w, digests);
    await this.execute({ cc: TPM_CC.PolicyOR, handles: [session], params: w.finish() });
  }

  async policyGetDigest(session: number): Promise<Uint8Array> {
    const { params: r } = await this.execute({ cc: TPM_CC.PolicyGetDigest, handles: [session] });
    const digest = r.tpm2b('policyDigest');
    r.end('TPM2_PolicyGetDigest response');
    return digest;
  }

  /**
   * Recovers the credential MakeCredential sealed to (`keyHandle`'s EK, `activateHandle`'s name).
   * `credentialBlob` and `secret` are the contents of TPM2B_ID_OBJECT / TPM2B_ENCRYPTED_SECRET.
   */
  async activateCredential(
    activateHandle: number,
    activateAuth: AuthSession,
    keyHandle: number,
    keyAuth: AuthSession,
    credentialBlob: Uint8Array,
    secret: Uint8Array,
  ): Promise<Uint8Array> {
    const { params: r } = await this.execute({
      cc: TPM_CC.ActivateCredential,
      handles: [activateHandle, keyHandle],
      auths: [activateAuth, keyAuth],
      params: new TpmWriter().tpm2b(credentialBlob).tpm2b(secret).finish(),
    });
    const certInfo = r.tpm2b('certInfo');
    r.end('TPM2_ActivateCredential response');
    return certInfo;
  }

  /** Has `signHandle` sign a TPMS_CERTIFY_INFO naming `objectHandle`. */
  async certify(
    objectHandle: number,
    objectAuth: AuthSession,
    signHandle: number,
    signAuth: AuthSession,
    qualifyingData: Uint8Array,
    scheme: SigScheme = KEY_SCHEME,
  ): Promise<SignedAttestation> {
    const w = new TpmWriter().tpm2b(qualifyingData);
    writeSigScheme(w, scheme);
    const { params: r } = await this.execute({
      cc: TPM_CC.Certify,
      handles: [objectHandle, signHandle],
      auths: [objectAuth, signAuth],
      params: w.finish(),
    });
    return readSignedAttestation(r, 'TPM2_Certify');
  }

  /** Runs `use` with a handle and flushes the handle afterwards, whatever `use` did. */
  async withHandle<T>(handle: number, use: (handle: number) => Promise<T>): Promise<T> {
    try {
      return await use(handle);
    } finally {
      await this.flushContext(handle);
    }
  }
}

function marshalCommand(spec: CommandSpec): Uint8Array {
  const auths = spec.auths ?? [];
  const body = new TpmWriter();
  for (const h of spec.handles ?? []) body.u32(h);
  if (auths.length > 0) {
    body.sized32((inner) => {
      for (const a of auths) writeAuth(inner, a);
    });
  }
  body.bytes(spec.params ?? EMPTY);
  const bytes = body.finish();
  return new TpmWriter()
    .u16(auths.length > 0 ? TPM_ST.SESSIONS : TPM_ST.NO_SESSIONS)
    .u32(10 + bytes.byteLength)
    .u32(spec.cc)
    .bytes(bytes)
    .finish();
}

function parseResponse(r: TpmReader, tag: number, handleCount: number, name: string): CommandResult {
  const handles: number[] = [];
  for (let i = 0; i < handleCount; i++) handles.push(r.u32('response handle'));
  if (tag === TPM_ST.SESSIONS) {
    const paramSize = r.u32('parameterSize');
    // The response auth area after the parameters carries nonces and acknowledgements only;
    // without HMAC sessions there is nothing in it to check.
    return { handles, params: new TpmReader(r.bytes(paramSize, `${name} parameters`)) };
  }
  if (tag !== TPM_ST.NO_SESSIONS) {
    throw new TpmError(
      'ERR_TPM_MALFORMED',
      `${name}: response tag 0x${tag.toString(16)} is not a TPM 2.0 tag`,
    );
  }
  return { handles, params: new TpmReader(r.bytes(r.remaining)) };
}

function creationParams(template: TpmtPublic): Uint8Array {
  const w = new TpmWriter();
  // TPM2B_SENSITIVE_CREATE: empty userAuth and data (the key's auth is the empty password).
  w.sized((inner) => inner.tpm2b(EMPTY).tpm2b(EMPTY));
  w.tpm2b(marshalPublic(template));
  w.tpm2b(EMPTY); // outsideInfo
  w.u32(0); // creationPCR: none
  return w.finish();
}

/** Skips creationData, creationHash and creationTicket of Create/CreatePrimary. */
function skipCreationOutputs(r: TpmReader): void {
  r.tpm2b('creationData');
  r.tpm2b('creationHash');
  r.u16('creationTicket.tag');
  r.u32('creationTicket.hierarchy');
  r.tpm2b('creationTicket.digest');
}

function writeSigScheme(w: TpmWriter, scheme: SigScheme): void {
  w.u16(scheme.scheme);
  if (scheme.scheme !== TPM_ALG.NULL) w.u16(scheme.hashAlg);
}

function readSignedAttestation(r: TpmReader, name: string): SignedAttestation {
  const attestBytes = r.tpm2b('TPM2B_ATTEST');
  const signature = readSignature(r);
  r.end(`${name} response`);
  // The codec re-encodes a TPMT_SIGNATURE byte for byte (tested against tpm2_quote output).
  return {
    attestBytes,
    attest: parseAttest(attestBytes),
    signatureBytes: marshalSignature(signature),
    signature,
  };
}

function first(handles: readonly number[]): number {
  const h = handles[0];
  if (h === undefined) throw new TpmError('ERR_TPM_MALFORMED', 'response carries no handle');
  return h;
}

function unexpected(what: string, capability: number): TpmError {
  return new TpmError('ERR_TPM_UNEXPECTED', `${what} answered with capability ${capability}`);
}
