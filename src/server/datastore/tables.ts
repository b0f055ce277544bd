/**
 * Row shapes as Kysely sees them. Booleans are 0/1 integers and times are Unix seconds, so the same
 * schema means the same thing on SQLite and PostgreSQL.
 *
 * @module
 */
import type { Generated } from 'kysely';

export interface RegistrationEntryRow {
  id: string;
  spiffe_id: string;
  parent_id: string;
  /** Canonical text of the sorted selectors; with spiffe_id and parent_id it is unique. */
  selectors_key: string;
  x509_svid_ttl: number;
  jwt_svid_ttl: number;
  /** JSON array of strings. */
  dns_names: string;
  admin: number;
  downstream: number;
  hint: string;
  /** 0 when the entry never expires. */
  expires_at: number;
  revision_number: number;
  created_at: number;
  updated_at: number;
}

export interface SelectorRow {
  entry_id: string;
  type: string;
  value: string;
}

export interface FederatesWithRow {
  entry_id: string;
  trust_domain: string;
}

export interface AttestedNodeRow {
  spiffe_id: string;
  attestation_type: string;
  serial_number: string;
  /** Set by a renewal until the agent first uses the certificate it issued. */
  new_serial_number: string | null;
  expires_at: number;
  ek_hash: string | null;
  ak_public: Uint8Array | null;
  last_quote: Uint8Array | null;
  reset_count: number | null;
  ek_issuer: string | null;
  attestation_count: number;
  /** Key id of the CA key that signed the current agent SVID; null when unknown (before 0007). */
  svid_authority: string | null;
  /** The last verified event log (TPM nodes). */
  event_log: Uint8Array | null;
  /** 'trusted' or 'untrusted'. */
  trust_state: string;
  trust_code: string | null;
  trust_reason: string | null;
  trust_details: string | null;
  /** 0 for rows from before continuous attestation: read as created_at. */
  trust_changed_at: number;
  created_at: number;
  updated_at: number;
}

/** Bans, keyed by agent ID: they outlive the node's record (eviction) and may precede it. */
export interface BannedNodeRow {
  spiffe_id: string;
  ek_hash: string | null;
  banned_at: number;
}

export interface NodeSelectorRow {
  spiffe_id: string;
  type: string;
  value: string;
}

export interface JoinTokenRow {
  /** SHA-256 of the token, hex: the token itself is never stored. */
  token_hash: string;
  spiffe_id: string | null;
  expires_at: number;
  created_at: number;
}

export interface AttestationNonceRow {
  /** SHA-256 of the nonce, hex. */
  nonce_hash: string;
  /** SHA-256 of the credential-activation secret, hex: the secret itself is never stored. */
  secret_hash: string | null;
  /** Milliseconds: a nonce lives seconds, so whole seconds would be too coarse. */
  expires_at_ms: number;
  consumed_at_ms: number | null;
}

export interface BundleRow {
  trust_domain: string;
  /** The SPIFFE bundle (JWKS) document. */
  document: string;
  sequence: number;
  federated: number;
  updated_at: number;
  /** Decimal spiffe_sequence of the bundle as its endpoint served it; NULL when set by an operator. */
  endpoint_sequence: string | null;
}

export interface FederationRelationshipRow {
  trust_domain: string;
  bundle_endpoint_url: string;
  /** 'https_web' or 'https_spiffe'. */
  profile: string;
  /** Set exactly when profile is https_spiffe. */
  endpoint_spiffe_id: string | null;
  created_at: number;
  updated_at: number;
}

export interface CaJournalRow {
  authority: 'x509' | 'jwt';
  slot: 'A' | 'B';
  key_id: string;
  state: 'prepared' | 'active' | 'old';
  public_key_der: Uint8Array;
  certificate_der: Uint8Array | null;
  not_before: number;
  not_after: number;
  tainted: number;
  updated_at: number;
}

/** A named lease (one row per name): who holds it and until when. */
export interface CaLeaseRow {
  name: string;
  holder: string;
  /** Unix milliseconds, by the clock of the server that took or renewed it. */
  expires_at_ms: number;
}

/** One row: the CA journal's version, raised by every journal change. */
export interface CaJournalVersionRow {
  version: number;
}

export interface AuditLogRow {
  id: Generated<number>;
  at: number;
  actor: string;
  action: string;
  object_type: string;
  object_id: string;
  /** JSON of what changed; never holds secrets. */
  detail: string;
}

export interface DatastoreIdentityRow {
  id: string;
}

export interface Database {
  registration_entries: RegistrationEntryRow;
  entry_selectors: SelectorRow;
  entry_federates_with: FederatesWithRow;
  attested_nodes: AttestedNodeRow;
  node_selectors: NodeSelectorRow;
  banned_nodes: BannedNodeRow;
  join_tokens: JoinTokenRow;
  attestation_nonces: AttestationNonceRow;
  bundles: BundleRow;
  federation_relationships: FederationRelationshipRow;
  ca_journal: CaJournalRow;
  ca_journal_version: CaJournalVersionRow;
  ca_lease: CaLeaseRow;
  audit_log: AuditLogRow;
  datastore_identity: DatastoreIdentityRow;
}
