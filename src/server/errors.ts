/**
 * Domain errors of ironroot-server. Each carries a stable `code` that callers (CLI, tests, clients
 * over gRPC) can switch on, and maps to one gRPC status so the registration API reports it
 * faithfully. Messages say what was wrong and what to do about it.
 *
 * @module
 */
import { status } from '@grpc/grpc-js';

export type ServerErrorCode =
  | 'ERR_CONFIG_INVALID'
  | 'ERR_CONFIG_UNSAFE'
  | 'ERR_CONFIG_FILE'
  | 'ERR_INVALID_ARGUMENT'
  | 'ERR_SPIFFE_ID_INVALID'
  | 'ERR_SPIFFE_ID_OUTSIDE_TRUST_DOMAIN'
  | 'ERR_SPIFFE_ID_RESERVED'
  | 'ERR_SELECTOR_MALFORMED'
  | 'ERR_TTL_OUT_OF_RANGE'
  | 'ERR_ENTRY_DUPLICATE'
  | 'ERR_ENTRY_NOT_FOUND'
  | 'ERR_ENTRY_REVISION_MISMATCH'
  | 'ERR_AGENT_NOT_FOUND'
  | 'ERR_AGENT_ATTESTED_AGAIN'
  | 'ERR_AGENT_ID_INVALID'
  | 'ERR_EK_HASH_INVALID'
  | 'ERR_BUNDLE_NOT_FOUND'
  | 'ERR_BUNDLE_IN_USE'
  | 'ERR_BUNDLE_SEQUENCE_STALE'
  | 'ERR_FEDERATION_INVALID'
  | 'ERR_FEDERATION_OWN_TRUST_DOMAIN'
  | 'ERR_FEDERATION_BUNDLE_MISSING'
  | 'ERR_FEDERATION_EXISTS'
  | 'ERR_FEDERATION_NOT_FOUND'
  | 'ERR_FEDERATES_WITH_UNKNOWN'
  | 'ERR_JOIN_TOKEN_INVALID'
  | 'ERR_PERMISSION_DENIED'
  | 'ERR_CA_ALREADY_PREPARED'
  | 'ERR_CA_NOTHING_PREPARED'
  | 'ERR_CA_AUTHORITY_NOT_FOUND'
  | 'ERR_CA_AUTHORITY_IN_USE'
  | 'ERR_CA_AUTHORITY_NOT_TAINTED'
  | 'ERR_CA_REVOKE_STRANDS_AGENTS'
  | 'ERR_CA_KEY_MISSING'
  | 'ERR_CA_LEASE_HELD'
  | 'ERR_CA_JOURNAL_CONFLICT'
  | 'ERR_CSR_INVALID'
  | 'ERR_DATASTORE'
  | 'ERR_PROFILE_INVALID'
  | 'ERR_PROFILE_NOT_FOUND'
  | 'ERR_PROFILE_NO_EVENT_LOG'
  | 'ERR_TRUST_DOMAIN_MISMATCH';

const GRPC_STATUS: Record<ServerErrorCode, status> = {
  ERR_CONFIG_INVALID: status.INVALID_ARGUMENT,
  ERR_CONFIG_UNSAFE: status.FAILED_PRECONDITION,
  ERR_CONFIG_FILE: status.INVALID_ARGUMENT,
  ERR_INVALID_ARGUMENT: status.INVALID_ARGUMENT,
  ERR_SPIFFE_ID_INVALID: status.INVALID_ARGUMENT,
  ERR_SPIFFE_ID_OUTSIDE_TRUST_DOMAIN: status.INVALID_ARGUMENT,
  ERR_SPIFFE_ID_RESERVED: status.INVALID_ARGUMENT,
  ERR_SELECTOR_MALFORMED: status.INVALID_ARGUMENT,
  ERR_TTL_OUT_OF_RANGE: status.INVALID_ARGUMENT,
  ERR_ENTRY_DUPLICATE: status.ALREADY_EXISTS,
  ERR_ENTRY_NOT_FOUND: status.NOT_FOUND,
  ERR_ENTRY_REVISION_MISMATCH: status.ABORTED,
  ERR_AGENT_NOT_FOUND: status.NOT_FOUND,
  ERR_AGENT_ATTESTED_AGAIN: status.ABORTED,
  ERR_AGENT_ID_INVALID: status.INVALID_ARGUMENT,
  ERR_EK_HASH_INVALID: status.INVALID_ARGUMENT,
  ERR_BUNDLE_NOT_FOUND: status.NOT_FOUND,
  ERR_BUNDLE_IN_USE: status.FAILED_PRECONDITION,
  ERR_BUNDLE_SEQUENCE_STALE: status.FAILED_PRECONDITION,
  ERR_FEDERATION_INVALID: status.INVALID_ARGUMENT,
  ERR_FEDERATION_OWN_TRUST_DOMAIN: status.INVALID_ARGUMENT,
  ERR_FEDERATION_BUNDLE_MISSING: status.FAILED_PRECONDITION,
  ERR_FEDERATION_EXISTS: status.ALREADY_EXISTS,
  ERR_FEDERATION_NOT_FOUND: status.NOT_FOUND,
  ERR_FEDERATES_WITH_UNKNOWN: status.FAILED_PRECONDITION,
  ERR_JOIN_TOKEN_INVALID: status.PERMISSION_DENIED,
  ERR_PERMISSION_DENIED: status.PERMISSION_DENIED,
  ERR_CA_ALREADY_PREPARED: status.FAILED_PRECONDITION,
  ERR_CA_NOTHING_PREPARED: status.FAILED_PRECONDITION,
  ERR_CA_AUTHORITY_NOT_FOUND: status.NOT_FOUND,
  ERR_CA_AUTHORITY_IN_USE: status.FAILED_PRECONDITION,
  ERR_CA_AUTHORITY_NOT_TAINTED: status.FAILED_PRECONDITION,
  ERR_CA_REVOKE_STRANDS_AGENTS: status.FAILED_PRECONDITION,
  ERR_CA_KEY_MISSING: status.FAILED_PRECONDITION,
  ERR_CA_LEASE_HELD: status.UNAVAILABLE,
  ERR_CA_JOURNAL_CONFLICT: status.ABORTED,
  ERR_CSR_INVALID: status.INVALID_ARGUMENT,
  ERR_DATASTORE: status.INTERNAL,
  ERR_PROFILE_INVALID: status.INVALID_ARGUMENT,
  ERR_PROFILE_NOT_FOUND: status.NOT_FOUND,
  ERR_PROFILE_NO_EVENT_LOG: status.FAILED_PRECONDITION,
  ERR_TRUST_DOMAIN_MISMATCH: status.FAILED_PRECONDITION,
};

export class ServerError extends Error {
  readonly code: ServerErrorCode;

  constructor(code: ServerErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = this.constructor.name;
  }

  get grpcStatus(): status {
    return GRPC_STATUS[this.code];
  }
}

export class ConfigInvalidError extends ServerError {
  /** One line per problem: `key.path: value … is not allowed; allowed: …`. */
  readonly issues: readonly string[];

  constructor(source: string, issues: readonly string[]) {
    super('ERR_CONFIG_INVALID', `invalid configuration in ${source}:\n  ${issues.join('\n  ')}`);
    this.issues = issues;
  }
}

export class ConfigUnsafeError extends ServerError {
  constructor(message: string) {
    super('ERR_CONFIG_UNSAFE', message);
  }
}

export class ConfigFileError extends ServerError {
  constructor(message: string, cause?: unknown) {
    super('ERR_CONFIG_FILE', message, { cause });
  }
}

export class InvalidArgumentError extends ServerError {
  constructor(message: string) {
    super('ERR_INVALID_ARGUMENT', message);
  }
}

/** An ID as messages show it: quoted, and cut short when it is long (an over-long ID is itself an error). */
function shownId(value: string): string {
  return JSON.stringify(value.length > 200 ? `${value.slice(0, 200)}…` : value);
}

export class SpiffeIdInvalidError extends ServerError {
  /** The SPIFFE ID rule broken (the spiffe library's code, e.g. ERR_SPIFFEID_TOO_LONG), when one is. */
  readonly rule: string | undefined;

  constructor(field: string, value: string, reason: string, rule?: string) {
    super(
      'ERR_SPIFFE_ID_INVALID',
      `${field} ${shownId(value)} is not a valid SPIFFE ID${rule === undefined ? '' : ` (${rule})`}: ${reason}`,
    );
    this.rule = rule;
  }
}

export class SpiffeIdOutsideTrustDomainError extends ServerError {
  constructor(field: string, value: string, trustDomain: string) {
    super(
      'ERR_SPIFFE_ID_OUTSIDE_TRUST_DOMAIN',
      `${field} ${shownId(value)} is outside this server's trust domain; use an ID of the form spiffe://${trustDomain}/…`,
    );
  }
}

export class SpiffeIdReservedError extends ServerError {
  constructor(field: string, value: string, owner: string) {
    super(
      'ERR_SPIFFE_ID_RESERVED',
      `${field} ${shownId(value)} is reserved for ${owner}; choose a path outside /agent and /ironroot, e.g. spiffe://<trust domain>/node/web-1`,
    );
  }
}

export class SelectorMalformedError extends ServerError {
  constructor(value: string) {
    super(
      'ERR_SELECTOR_MALFORMED',
      `selector ${JSON.stringify(value)} is malformed; write it as type:value (e.g. unix:uid:1000), with a non-empty type and value`,
    );
  }
}

export class TtlOutOfRangeError extends ServerError {
  constructor(field: string, value: number, min: number, max: number) {
    super(
      'ERR_TTL_OUT_OF_RANGE',
      `${field} ${value} is out of range; allowed: ${min}..${max} seconds (0 = server default)`,
    );
  }
}

export class EntryDuplicateError extends ServerError {
  readonly existingId: string;

  constructor(existingId: string) {
    super(
      'ERR_ENTRY_DUPLICATE',
      `an entry with the same spiffe_id, parent_id and selectors already exists (id ${existingId}); update that entry instead`,
    );
    this.existingId = existingId;
  }
}

export class EntryNotFoundError extends ServerError {
  constructor(id: string) {
    super(
      'ERR_ENTRY_NOT_FOUND',
      `no registration entry with id ${JSON.stringify(id)}; list entries with "entry show"`,
    );
  }
}

export class EntryRevisionMismatchError extends ServerError {
  constructor(id: string, expected: number, actual: number) {
    super(
      'ERR_ENTRY_REVISION_MISMATCH',
      `entry ${id} is at revision ${actual}, not ${expected}: it changed since you read it; read it again and retry`,
    );
  }
}

export class AgentNotFoundError extends ServerError {
  constructor(spiffeId: string) {
    super(
      'ERR_AGENT_NOT_FOUND',
      `no attested agent with SPIFFE ID ${JSON.stringify(spiffeId)}; see "agent list"`,
    );
  }
}

/**
 * A verdict made on one attestation of a node reached the datastore after the node attested again:
 * it says nothing about the new attestation's AK and boot, so it is not written.
 */
export class NodeAttestedAgainError extends ServerError {
  constructor(spiffeId: string, judged: AttestationRef, found: AttestationRef) {
    super(
      'ERR_AGENT_ATTESTED_AGAIN',
      `agent ${JSON.stringify(spiffeId)} attested again while a verdict on its earlier attestation was being made (the verdict was on ${describe(judged)}; the node now holds ${describe(found)}); the verdict was not recorded: the next re-quote judges the new attestation ("agent reattest" judges it now)`,
    );
  }
}

type AttestationRef = Readonly<{ attestationCount: number; createdAt: number }>;

function describe(ref: AttestationRef): string {
  return `attestation ${ref.attestationCount} of the record created ${new Date(ref.createdAt * 1000).toISOString()}`;
}

/**
 * A fetched bundle older (by its endpoint's spiffe_sequence) than the one stored meanwhile, by
 * another server sharing the datastore: storing it would bring back what the newer one removed.
 */
export class BundleSequenceStaleError extends ServerError {
  readonly stored: bigint;
  readonly offered: bigint;

  constructor(trustDomain: string, stored: bigint, offered: bigint) {
    super(
      'ERR_BUNDLE_SEQUENCE_STALE',
      `the bundle of ${trustDomain} stored meanwhile has spiffe_sequence ${stored}, newer than the ${offered} offered; the stored one stays`,
    );
    this.stored = stored;
    this.offered = offered;
  }
}

export class AgentIdInvalidError extends ServerError {
  constructor(field: string, value: string, trustDomain: string) {
    super(
      'ERR_AGENT_ID_INVALID',
      `${field} ${JSON.stringify(value)} names no agent: agents are spiffe://${trustDomain}/agent/tpm/<EK hash> or spiffe://${trustDomain}/agent/join_token/<token hash>; see "agent list", or ban a TPM by --ek-hash`,
    );
  }
}

export class EkHashInvalidError extends ServerError {
  constructor(value: string) {
    super(
      'ERR_EK_HASH_INVALID',
      `ek_hash ${JSON.stringify(value)} is not an EK hash: give the SHA-256 of the EK's SubjectPublicKeyInfo as 64 hex digits (the node's tpm:ek-hash selector, or the EK's public key SHA-256 in "ironroot-agent tpm info" on the node)`,
    );
  }
}

export class BundleNotFoundError extends ServerError {
  constructor(trustDomain: string) {
    super(
      'ERR_BUNDLE_NOT_FOUND',
      `no federated bundle for trust domain ${JSON.stringify(trustDomain)}; see "bundle list"`,
    );
  }
}

/** A federated bundle registration entries federate with: deleting it would leave them without it. */
export class BundleInUseError extends ServerError {
  constructor(trustDomain: string, entries: number) {
    super(
      'ERR_BUNDLE_IN_USE',
      `${entries} registration ${entries === 1 ? 'entry federates' : 'entries federate'} with ${trustDomain}: their workloads would silently lose its bundle; take it out of their federates-with first (entry show --federates-with ${trustDomain}), or delete with --mode dissociate (takes it out of them) or --mode delete (deletes them)`,
    );
  }
}

/** A federation relationship field that is malformed or breaks a rule of its profile. */
export class FederationInvalidError extends ServerError {
  readonly field: string;

  constructor(field: string, message: string) {
    super('ERR_FEDERATION_INVALID', `${field}: ${message}`);
    this.field = field;
  }
}

export class FederationOwnTrustDomainError extends ServerError {
  constructor(trustDomain: string) {
    super(
      'ERR_FEDERATION_OWN_TRUST_DOMAIN',
      `${trustDomain} is this server's own trust domain; federate only with foreign ones`,
    );
  }
}

/** https_spiffe authenticates the endpoint with the foreign bundle, which must thus be known first. */
export class FederationBundleMissingError extends ServerError {
  constructor(trustDomain: string) {
    super(
      'ERR_FEDERATION_BUNDLE_MISSING',
      `profile https_spiffe authenticates the bundle endpoint of ${trustDomain} with that trust domain's bundle, and none is stored: give one with --trust-domain-bundle-path (SPIFFE bundle JSON, or PEM with --trust-domain-bundle-format pem), or store it first with "bundle set --id ${trustDomain}"`,
    );
  }
}

export class FederationExistsError extends ServerError {
  constructor(trustDomain: string) {
    super(
      'ERR_FEDERATION_EXISTS',
      `a federation relationship with ${trustDomain} already exists; change it with "federation update --trust-domain ${trustDomain}"`,
    );
  }
}

export class FederationNotFoundError extends ServerError {
  constructor(trustDomain: string) {
    super(
      'ERR_FEDERATION_NOT_FOUND',
      `no federation relationship with trust domain ${JSON.stringify(trustDomain)}; see "federation list"`,
    );
  }
}

/** An entry names a trust domain to federate with that the server could give no bundle for. */
export class FederatesWithUnknownError extends ServerError {
  readonly trustDomains: readonly string[];

  constructor(trustDomains: readonly string[]) {
    super(
      'ERR_FEDERATES_WITH_UNKNOWN',
      `federates_with: ${trustDomains.join(', ')} ${trustDomains.length === 1 ? 'has' : 'have'} neither a federation relationship nor a stored bundle; create one first ("federation create" or "bundle set")`,
    );
    this.trustDomains = trustDomains;
  }
}

export class JoinTokenInvalidError extends ServerError {
  constructor() {
    // Deliberately the same message for unknown, used and expired tokens: the caller learns nothing.
    super('ERR_JOIN_TOKEN_INVALID', 'join token is unknown, already used or expired; generate a new one');
  }
}

export class PermissionDeniedError extends ServerError {
  constructor(message: string) {
    super('ERR_PERMISSION_DENIED', message);
  }
}

export class DatastoreError extends ServerError {
  constructor(message: string, cause?: unknown) {
    super('ERR_DATASTORE', message, { cause });
  }
}

/** Misuse of the local authority commands, or a CA key the journal names but the KeyManager lacks. */
export class CaError extends ServerError {}

/**
 * Another server (sharing the datastore) holds the CA rotation lease: it is preparing, activating or
 * pruning, or an operator command runs there. Free again when that ends, or when the lease expires.
 */
export class CaLeaseHeldError extends CaError {
  constructor(holder: string, expiresAtMs: number) {
    super(
      'ERR_CA_LEASE_HELD',
      `the CA is being changed by ${holder} (it holds the rotation lease until ${new Date(expiresAtMs).toISOString()}); try again when it is done, or after that time if that server is gone`,
    );
  }
}

/**
 * The CA journal moved since this server last read it: another server changed it. Nothing was
 * written; the server reloads the journal, and the step can be tried again on the new state.
 */
export class CaJournalConflictError extends CaError {
  constructor(expected: number, found: number) {
    super(
      'ERR_CA_JOURNAL_CONFLICT',
      `the CA journal was changed by another server meanwhile (version ${found}, this server had read ${expected}); nothing was written: look at the authorities again ("localauthority x509 show") and repeat the command if it is still needed`,
    );
  }
}

export class TrustDomainMismatchError extends ServerError {
  /** `where` names the datastore (`data_dir /var/lib/ironroot`); `fresh` what a new one would be. */
  constructor(where: string, stored: string, configured: string, fresh = 'data_dir') {
    super(
      'ERR_TRUST_DOMAIN_MISMATCH',
      `${where} belongs to trust domain ${stored} (its CA and bundle were made for it), not ${configured}: a server cannot change its trust domain; start with trust_domain ${stored}, or give ${configured} a new, empty ${fresh}`,
    );
  }
}
