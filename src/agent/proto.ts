/**
 * The agent API's .proto on the agent side (src/agent may not import the server's loader), and the message shapes as
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
