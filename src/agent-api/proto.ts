/**
 * The agent API's .proto, loaded at run time, and the message shapes as
 * proto-loader hands them over (keepCase, bytes as Buffer, int64 as number, oneof name in `step`).
 *
 * @module
 */
import { fileURLToPath } from 'node:url';
import { type GrpcObject, loadPackageDefinition, type ServiceClientConstructor } from '@grpc/grpc-js';
import { loadSync } from '@grpc/proto-loader';

const PROTO_ROOT = fileURLToPath(new URL('../../proto', import.meta.url));

export interface PcrSelectionMessage {
  hash_alg: number;
  pcrs: number[];
}
export interface TpmEvidenceMessage {
  ek_certificates: Buffer[];
  ek_public: Buffer;
  ak_public: Buffer;
}
export interface ChallengeResponseMessage {
  activated_secret: Buffer;
  quote: Buffer;
  signature: Buffer;
  pcr_values: Buffer[];
  event_log: Buffer;
}
export interface AttestAgentRequest {
  step?: 'params' | 'challenge_response';
  params?: { method: string; csr: Buffer; tpm: TpmEvidenceMessage | null; join_token: string } | null;
  challenge_response?: ChallengeResponseMessage | null;
}
export interface RenewAgentRequest {
  step?: 'params' | 'challenge_response';
  params?: { csr: Buffer; tpm: TpmEvidenceMessage | null } | null;
  challenge_response?: ChallengeResponseMessage | null;
}
export interface AttestAgentResponse {
  challenge?: {
    credential_blob: Uint8Array;
    encrypted_secret: Uint8Array;
    nonce: Uint8Array;
    pcr_selection: PcrSelectionMessage[];
  };
  result?: { spiffe_id: string; svid_chain: Uint8Array[]; expires_at: number; bundle: Uint8Array[] };
}

export interface SyncCursorMessage {
  epoch: string;
  revision: number;
  scope: string;
}
export interface FetchEntriesRequest {
  cursor: SyncCursorMessage | null;
}
export interface EntryMessage {
  id: string;
  spiffe_id: string;
  parent_id: string;
  selectors: string[];
  x509_svid_ttl: number;
  jwt_svid_ttl: number;
  dns_names: string[];
  federates_with: string[];
  hint: string;
  revision_number: number;
  created_at: number;
  expires_at: number;
}
export interface FetchEntriesResponse {
  full: boolean;
  entries: EntryMessage[];
  deleted_ids: string[];
  cursor: SyncCursorMessage | null;
}
export interface BatchNewX509SvidRequest {
  requests: { entry_id: string; csr: Buffer }[];
}
export interface BatchNewX509SvidResponse {
  svids: { entry_id: string; chain: Uint8Array[]; expires_at: number }[];
}
export interface NewJwtSvidRequest {
  entry_id: string;
  audience: string[];
}
export interface NewJwtSvidResponse {
  token: string;
  expires_at: number;
}
export interface FetchBundlesResponse {
  bundle: string;
  active_x509_authority: Uint8Array;
  federated: { trust_domain: string; document: string }[];
}

export interface ReattestRequest {
  challenge_id: number;
  quote: Buffer;
  signature: Buffer;
  pcr_values: Buffer[];
  event_log_prior_length: number;
  event_log_tail: Buffer;
}
export interface QuoteChallengeMessage {
  challenge_id: number;
  nonce: Uint8Array;
  pcr_selection: PcrSelectionMessage[];
}
export interface ReattestOutcomeMessage {
  challenge_id: number;
  trusted: boolean;
  code: string;
  reason: string;
}
export interface ReattestChallenge {
  step?: 'challenge' | 'outcome';
  challenge?: QuoteChallengeMessage | null;
  outcome?: ReattestOutcomeMessage | null;
}

let cached: ServiceClientConstructor | undefined;

export function agentService(): ServiceClientConstructor {
  if (cached) return cached;
  const definition = loadSync(['ironroot/agent/v1/agent.proto'], {
    includeDirs: [PROTO_ROOT],
    keepCase: true,
    longs: Number,
    enums: String,
    defaults: true,
    arrays: true,
    oneofs: true,
  });
  let node: GrpcObject = loadPackageDefinition(definition);
  for (const part of ['ironroot', 'agent', 'v1']) {
    const next = node[part];
    if (next === undefined || typeof next === 'function' || 'format' in next)
      throw new Error(`agent proto: package ironroot.agent.v1 not found under ${PROTO_ROOT}`);
    node = next;
  }
  const ctor = node.Agent;
  if (typeof ctor !== 'function') throw new Error(`agent proto: service Agent not found under ${PROTO_ROOT}`);
  cached = ctor;
  return cached;
}
