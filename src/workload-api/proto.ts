/**
 * Loads `proto/workload.proto` and describes its messages as the plain objects @grpc/proto-loader
 * produces with {@link LOADER_OPTIONS}. Shared by the server and the client.
 *
 * @module
 */
import { fileURLToPath } from 'node:url';
import { type GrpcObject, loadPackageDefinition, type ServiceDefinition } from '@grpc/grpc-js';
import { loadSync, type Options } from '@grpc/proto-loader';

/** The proto file; `../../proto` from both `src/workload-api` and `dist/workload-api`. */
export const WORKLOAD_PROTO_PATH = fileURLToPath(new URL('../../proto/workload.proto', import.meta.url));

/** The standard's metadata key and value every request must carry (Workload Endpoint §3). */
export const SECURITY_HEADER = 'workload.spiffe.io';
export const SECURITY_HEADER_VALUE = 'true';

/** Field names as in the proto (snake_case), every field present, bytes as Buffer. */
export const LOADER_OPTIONS: Options = {
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
};

export interface X509SVIDMessage {
  spiffe_id: string;
  x509_svid: Buffer;
  x509_svid_key: Buffer;
  bundle: Buffer;
  hint: string;
}
export interface X509SVIDResponseMessage {
  svids: X509SVIDMessage[];
  crl: Buffer[];
  federated_bundles: Record<string, Buffer>;
}
export interface X509BundlesResponseMessage {
  crl: Buffer[];
  bundles: Record<string, Buffer>;
}
export interface JWTSVIDRequestMessage {
  audience: string[];
  spiffe_id: string;
}
export interface JWTSVIDMessage {
  spiffe_id: string;
  svid: string;
  hint: string;
}
export interface JWTSVIDResponseMessage {
  svids: JWTSVIDMessage[];
}
export interface JWTBundlesResponseMessage {
  bundles: Record<string, Buffer>;
}
export interface ValidateJWTSVIDRequestMessage {
  audience: string;
  svid: string;
}
export interface ValidateJWTSVIDResponseMessage {
  spiffe_id: string;
  claims: StructMessage | null;
}
export type EmptyMessage = Record<string, never>;

/**
 * google.protobuf.Struct as proto-loader represents it with oneofs. protobufjs defines the well-known
 * types itself, in camelCase, whatever `keepCase` says.
 */
export interface StructMessage {
  fields: Record<string, ValueMessage>;
}
export interface ValueMessage {
  nullValue?: 'NULL_VALUE' | 0;
  numberValue?: number;
  stringValue?: string;
  boolValue?: boolean;
  structValue?: StructMessage;
  listValue?: { values: ValueMessage[] };
  kind?: string;
}

let cached: ServiceDefinition | undefined;

/** The `SpiffeWorkloadAPI` service definition (no package: the standard puts it in the root namespace). */
export function workloadServiceDefinition(): ServiceDefinition {
  if (cached === undefined) {
    const grpcObject: GrpcObject = loadPackageDefinition(loadSync(WORKLOAD_PROTO_PATH, LOADER_OPTIONS));
    const ctor = grpcObject.SpiffeWorkloadAPI;
    if (typeof ctor !== 'function' || !('service' in ctor)) {
      throw new Error(`${WORKLOAD_PROTO_PATH} does not define the SpiffeWorkloadAPI service`);
    }
    cached = ctor.service;
  }
  return cached;
}

/** JSON value to google.protobuf.Value. */
export function toValue(value: unknown): ValueMessage {
  if (value === null || value === undefined) return { nullValue: 'NULL_VALUE' };
  if (typeof value === 'number') return { numberValue: value };
  if (typeof value === 'string') return { stringValue: value };
  if (typeof value === 'boolean') return { boolValue: value };
  if (Array.isArray(value)) return { listValue: { values: value.map(toValue) } };
  if (typeof value === 'object') return { structValue: toStruct(value as Record<string, unknown>) };
  // bigint, symbol, function: not JSON; a JWT payload never holds them.
  return { stringValue: String(value) };
}

/** JSON object to google.protobuf.Struct. */
export function toStruct(object: Readonly<Record<string, unknown>>): StructMessage {
  const fields: Record<string, ValueMessage> = {};
  for (const [key, value] of Object.entries(object)) fields[key] = toValue(value);
  return { fields };
}

/** google.protobuf.Value to JSON value. */
export function fromValue(value: ValueMessage): unknown {
  switch (value.kind) {
    case 'numberValue':
      return value.numberValue;
    case 'stringValue':
      return value.stringValue;
    case 'boolValue':
      return value.boolValue;
    case 'structValue':
      return value.structValue === undefined ? {} : fromStruct(value.structValue);
    case 'listValue':
      return (value.listValue?.values ?? []).map(fromValue);
    default:
      return null;
  }
}

/** google.protobuf.Struct to JSON object. */
export function fromStruct(struct: StructMessage): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(struct.fields)) out[key] = fromValue(value);
  return out;
}
