/**
 * The agent's half of the TPM handshake: gather evidence (EK certificates, EK, a fresh AK under
 * the EK, event log), then answer the server's challenge (ActivateCredential, Quote). Each step
 * opens the TPM, does its work and flushes everything: without a resource manager (swtpm over a
 * socket) nothing transient may be left behind, and AK contexts do not survive a TPM restart, so
 * the AK is kept as blobs.
 *
 * @module
 */

import type {
  AttestAgentResponse,
  ChallengeResponseMessage,
  TpmEvidenceMessage,
} from '../../agent-api/proto.js';
// The agent-side modules, not the index: it also loads the verifier's (tpm/verify, the event log
// parser and replay, firmware profiles), which an agent never runs.
import {
  activateCredential,
  createAk,
  type EkKind,
  quotePcrs,
  readEkCertificates,
  readEventLog,
  withAk,
  withEk,
} from '../../tpm/agent/index.js';
import { pcrSelection } from '../../tpm/codec/pcr.js';
import { marshalTpm2bPublic } from '../../tpm/codec/public.js';
import { Tpm } from '../../tpm/tpm.js';
import { AgentError } from '../errors.js';
import type { StoredAk } from '../store.js';

export interface TpmAttestorOptions {
  readonly tcti: string;
  /** `auto`: the RSA-2048 EK when its certificate is present, else the first EK with a certificate. */
  readonly ek: EkKind | 'auto';
  /** `none` sends no event log. */
  readonly eventLogPath: string;
}

/** What the server sends back: MakeCredential output (empty on renewal), nonce, PCR selection. */
export interface ChallengeIn {
  readonly credentialBlob: Uint8Array;
  readonly encryptedSecret: Uint8Array;
  readonly nonce: Uint8Array;
  readonly selection: readonly { hash: number; pcrs: readonly number[] }[];
}

/** The server's challenge as `answer` takes it. */
export function challengeIn(challenge: NonNullable<AttestAgentResponse['challenge']>): ChallengeIn {
  return {
    credentialBlob: new Uint8Array(challenge.credential_blob),
    encryptedSecret: new Uint8Array(challenge.encrypted_secret),
    nonce: new Uint8Array(challenge.nonce),
    selection: challenge.pcr_selection.map((s) => ({ hash: s.hash_alg, pcrs: s.pcrs })),
  };
}

const EK_PREFERENCE: readonly EkKind[] = [
  'rsa2048',
  'ecc-p384-high',
  'ecc-p256',
  'ecc-p256-high',
  'rsa2048-high',
];

export class TpmAttestor {
  readonly #o: TpmAttestorOptions;

  constructor(options: TpmAttestorOptions) {
    this.#o = options;
  }

  async #withTpm<T>(use: (tpm: Tpm) => Promise<T>): Promise<T> {
    let tpm: Tpm;
    try {
      tpm = await Tpm.open(this.#o.tcti);
    } catch (cause) {
      throw new AgentError(
        'ERR_AGENT_TPM',
        `cannot open the TPM at ${this.#o.tcti} (${(cause as Error).message}); check tcti and that this user may use the TPM`,
        { cause },
      );
    }
    try {
      return await use(tpm);
    } finally {
      await tpm.close();
    }
  }

  /** Evidence for a full attestation, with a fresh AK whose blobs the caller persists on success. */
  async evidence(): Promise<{ evidence: TpmEvidenceMessage; ak: StoredAk }> {
    return this.#withTpm(async (tpm) => {
      const certs = await readEkCertificates(tpm);
      const kind = this.#chooseEk(certs.map((c) => c.kind));
      const leaf = certs.find((c) => c.kind === kind);
      const chain = certs.filter((c) => c.kind === 'intermediate');
      return withEk(tpm, kind, async (ek) => {
        const ak = await createAk(tpm, ek, 'rsa2048');
        return {
          evidence: {
            ek_certificates: [...(leaf ? [leaf] : []), ...chain].map((c) => Buffer.from(c.der)),
            ek_public: Buffer.from(marshalTpm2bPublic(ek.public.area)),
            ak_public: Buffer.from(ak.publicBlob),
          },
          ak: { ek: kind, privateBlob: ak.privateBlob, publicBlob: ak.publicBlob },
        };
      });
    });
  }

  /** EK evidence for renewal: the server re-checks the EK against today's policy. */
  async ekEvidence(ak: StoredAk): Promise<TpmEvidenceMessage> {
    return this.#withTpm(async (tpm) => {
      const certs = await readEkCertificates(tpm);
      const leaf = certs.find((c) => c.kind === ak.ek);
      const chain = certs.filter((c) => c.kind === 'intermediate');
      return withEk(tpm, ak.ek, async (ek) => ({
        ek_certificates: [...(leaf ? [leaf] : []), ...chain].map((c) => Buffer.from(c.der)),
        ek_public: Buffer.from(marshalTpm2bPublic(ek.public.area)),
        ak_public: Buffer.from(ak.publicBlob),
      }));
    });
  }

  /** ActivateCredential (when the challenge carries one), then a quote qualified by the nonce. */
  async answer(ak: StoredAk, challenge: ChallengeIn): Promise<ChallengeResponseMessage> {
    const eventLog = await this.#eventLog();
    return this.#withTpm((tpm) =>
      withEk(tpm, ak.ek, (ek) =>
        withAk(tpm, ek, ak, async (loaded) => {
          const secret =
            challenge.credentialBlob.length > 0
              ? await activateCredential(tpm, ek, loaded, {
                  credentialBlob: challenge.credentialBlob,
                  secret: challenge.encryptedSecret,
                })
              : new Uint8Array();
          const selection = challenge.selection.map((s) => pcrSelection(s.hash, [...s.pcrs]));
          const quote = await quotePcrs(tpm, loaded, challenge.nonce, selection);
          return {
            activated_secret: Buffer.from(secret),
            quote: Buffer.from(quote.attestBytes),
            signature: Buffer.from(quote.signatureBytes),
            pcr_values: quote.pcrs.flatMap((bank) => [...bank.values.values()].map((v) => Buffer.from(v))),
            event_log: Buffer.from(eventLog),
          };
        }),
      ),
    );
  }

  #chooseEk(present: readonly string[]): EkKind {
    if (this.#o.ek !== 'auto') return this.#o.ek;
    const found = EK_PREFERENCE.find((kind) => present.includes(kind));
    if (found === undefined)
      throw new AgentError(
        'ERR_AGENT_TPM',
        'this TPM has no EK certificate in NV; set ek: rsa2048 (or another EK) and have the server allow-list the EK hash',
      );
    return found;
  }

  async #eventLog(): Promise<Uint8Array> {
    if (this.#o.eventLogPath === 'none') return new Uint8Array();
    try {
      return await readEventLog(this.#o.eventLogPath);
    } catch {
      // No log (VMs without a vTPM log, no securityfs): the server decides whether that is acceptable
      // (tpm_attestation.require_event_log) and says so by name.
      return new Uint8Array();
    }
  }
}
