/**
 * Loads the admin API's .proto files at run time (proto-loader), from `proto/` at the package
 * root, which both `src/` and `dist/` reach by the same relative path.
 *
 * @module
 */
import { fileURLToPath } from 'node:url';
import { type GrpcObject, loadPackageDefinition, type ServiceClientConstructor } from '@grpc/grpc-js';
import { loadSync } from '@grpc/proto-loader';
import type { ServiceName } from './messages.js';

const PROTO_ROOT = fileURLToPath(new URL('../../../proto', import.meta.url));
const FILES = [
  'ironroot/admin/v1/entry.proto',
  'ironroot/admin/v1/agent.proto',
  'ironroot/admin/v1/authority.proto',
  'ironroot/admin/v1/profile.proto',
  'ironroot/admin/v1/federation.proto',
];

let cached: Record<ServiceName, ServiceClientConstructor> | undefined;

/** The admin services' constructors; each carries its `service` definition for servers. */
export function adminServices(): Record<ServiceName, ServiceClientConstructor> {
  if (cached) return cached;
  const definition = loadSync(FILES, {
    includeDirs: [PROTO_ROOT],
    keepCase: true,
    longs: Number,
    enums: String,
    defaults: true,
    arrays: true,
    oneofs: true,
  });
  const root = loadPackageDefinition(definition);
  const v1 = descend(root, ['ironroot', 'admin', 'v1']);
  cached = {
    EntryService: service(v1, 'EntryService'),
    AgentService: service(v1, 'AgentService'),
    LocalAuthorityService: service(v1, 'LocalAuthorityService'),
    BundleService: service(v1, 'BundleService'),
    SvidService: service(v1, 'SvidService'),
    ProfileService: service(v1, 'ProfileService'),
    FederationService: service(v1, 'FederationService'),
  };
  return cached;
}

function descend(object: GrpcObject, path: readonly string[]): GrpcObject {
  let current = object;
  for (const part of path) {
    const next = current[part];
    if (next === undefined || typeof next === 'function' || !isNamespace(next)) {
      throw new Error(`admin proto: package ${path.join('.')} not found under ${PROTO_ROOT}`);
    }
    current = next;
  }
  return current;
}

function isNamespace(value: object): value is GrpcObject {
  return !('format' in value);
}

function service(namespace: GrpcObject, name: ServiceName): ServiceClientConstructor {
  const ctor = namespace[name];
  if (typeof ctor !== 'function')
    throw new Error(`admin proto: service ${name} not found under ${PROTO_ROOT}`);
  return ctor;
}
