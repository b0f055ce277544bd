/**
 * TypeScript shapes of the admin API messages, as proto-loader decodes them with the options in
 * proto.ts (snake_case field names, int64 as number, defaults and empty arrays filled in).
 *
 * @module
 */

export interface SelectorMessage {
  type: string;
  value: string;
}

export interface EntryMessage {
  id: string;
  spiffe_id: string;
  parent_id: string;
  selectors: SelectorMessage[];
  x509_svid_ttl: number;
  jwt_svid_ttl: number;
  dns_names: string[];
  admin: boolean;
  downstream: boolean;
  federates_with: string[];
  hint: string;
  expires_at: number;
  revision_number: number;
  created_at: number;
}

export interface StatusMessage {
  code: number;
  error_code: string;
  message: string;
}

export interface EntryResult {
  status: StatusMessage;
  entry: EntryMessage | null;
}

export interface EntryFilterMessage {
  by_spiffe_id: string;
  by_parent_id: string;
  by_selectors: SelectorMessage[];
  selector_match: string;
  by_federates_with: string[];
}

export interface BatchCreateEntryRequest {
  entries: EntryMessage[];
}
export interface BatchCreateEntryResponse {
  results: EntryResult[];
}
export interface GetEntryRequest {
  id: string;
}
export interface ListEntriesRequest {
  filter: EntryFilterMessage | null;
  page_size: number;
  page_token: string;
}
export interface ListEntriesResponse {
  entries: EntryMessage[];
  next_page_token: string;
}
export interface CountEntriesRequest {
  filter: EntryFilterMessage | null;
}
export interface CountEntriesResponse {
  count: number;
}
export interface BatchUpdateEntryRequest {
  entries: EntryMessage[];
}
export interface BatchUpdateEntryResponse {
  results: EntryResult[];
}
export interface BatchDeleteEntryRequest {
  ids: string[];
}
export interface DeleteResult {
  status: StatusMessage;
  id: string;
}
export interface BatchDeleteEntryResponse {
  results: DeleteResult[];
}

export interface AgentMessage {
  spiffe_id: string;
  attestation_type: string;
  x509_svid_serial_number: string;
  x509_svid_expires_at: number;
  banned: boolean;
  selectors: SelectorMessage[];
  ek_hash: string;
  created_at: number;
  alias_spiffe_ids: string[];
  ek_issuer: string;
  ak_public_sha256: string;
  ak_algorithm: string;
  last_quote: LastQuoteMessage | null;
  attestation_count: number;
  trust: NodeTrustMessage | null;
  banned_at: number;
}
export interface NodeTrustMessage {
  state: string;
  code: string;
  reason: string;
  details: string;
  changed_at: number;
}
export interface ReattestAgentResponse {
  trusted: boolean;
  code: string;
  reason: string;
  duration_ms: number;
  agent: AgentMessage | null;
}
export interface LastQuoteMessage {
  quoted_at: number;
  reset_count: number;
  restart_count: number;
  firmware_version: string;
  pcrs: PcrValueMessage[];
}
export interface PcrValueMessage {
  bank: string;
  index: number;
  value: string;
}
export interface ListAgentsRequest {
  by_banned: string;
}
export interface ListAgentsResponse {
  agents: AgentMessage[];
}
export interface AgentIdRequest {
  spiffe_id: string;
}
export interface BanAgentRequest {
  spiffe_id: string;
  ek_hash: string;
}
export interface CreateJoinTokenRequest {
  ttl: number;
  spiffe_id: string;
}
export interface JoinTokenMessage {
  value: string;
  expires_at: number;
}

export interface AuthorityKindRequest {
  kind: string;
}
export interface AuthorityKeyRequest {
  kind: string;
  authority_id: string;
  force?: boolean;
}
export interface AgentReadinessMessage {
  active_authority_id: string;
  agents: number;
  current: number;
  behind: string[];
}
export interface AuthorityMessage {
  kind: string;
  authority_id: string;
  slot: string;
  state: string;
  not_before: number;
  not_after: number;
  tainted: boolean;
  certificate_pem: string;
  readiness?: AgentReadinessMessage | null;
}
export interface ListAuthoritiesResponse {
  authorities: AuthorityMessage[];
  readiness?: AgentReadinessMessage | null;
}
export type Empty = Record<string, never>;
export interface BundleMessage {
  trust_domain: string;
  document: string;
  x509_pem: string;
  sequence: number;
  /** Why the stored document fails today's checks; '' when it passes. */
  refused: string;
  /** The spiffe_sequence the bundle endpoint served the document with; '' when an operator set it. */
  endpoint_sequence: string;
}
export interface ListFederatedBundlesResponse {
  bundles: BundleMessage[];
}
export interface SetFederatedBundleRequest {
  trust_domain: string;
  document: string;
  format: string;
}
export interface DeleteFederatedBundleRequest {
  trust_domain: string;
  /** 'restrict' (or ''), 'dissociate' or 'delete'. */
  mode: string;
}
export interface MintX509SvidRequest {
  csr: Uint8Array;
  ttl: number;
}
export interface MintX509SvidResponse {
  chain: Uint8Array[];
  expires_at: number;
}
export interface MintJwtSvidRequest {
  spiffe_id: string;
  audience: string[];
  ttl: number;
}
export interface MintJwtSvidResponse {
  token: string;
  expires_at: number;
}

export interface FederatedBundleStateMessage {
  sequence: number;
  refresh_hint: number;
  updated_at: number;
}
export interface FederationRelationshipMessage {
  trust_domain: string;
  bundle_endpoint_url: string;
  bundle_endpoint_profile: string;
  endpoint_spiffe_id: string;
  created_at: number;
  updated_at: number;
  bundle: FederatedBundleStateMessage | null;
}
export interface ListFederationRelationshipsResponse {
  relationships: FederationRelationshipMessage[];
}
export interface FederationTrustDomainRequest {
  trust_domain: string;
}
export interface FederationRelationshipRequest {
  relationship: FederationRelationshipMessage | null;
  trust_domain_bundle: string;
  trust_domain_bundle_format: string;
}

/** Every RPC of the admin API: request and response types by service and method. */
export interface AdminApi {
  EntryService: {
    BatchCreateEntry: [BatchCreateEntryRequest, BatchCreateEntryResponse];
    GetEntry: [GetEntryRequest, EntryMessage];
    ListEntries: [ListEntriesRequest, ListEntriesResponse];
    CountEntries: [CountEntriesRequest, CountEntriesResponse];
    BatchUpdateEntry: [BatchUpdateEntryRequest, BatchUpdateEntryResponse];
    BatchDeleteEntry: [BatchDeleteEntryRequest, BatchDeleteEntryResponse];
  };
  AgentService: {
    ListAgents: [ListAgentsRequest, ListAgentsResponse];
    GetAgent: [AgentIdRequest, AgentMessage];
    EvictAgent: [AgentIdRequest, AgentMessage];
    BanAgent: [BanAgentRequest, AgentMessage];
    UnbanAgent: [AgentIdRequest, AgentMessage];
    ReattestAgent: [AgentIdRequest, ReattestAgentResponse];
    CreateJoinToken: [CreateJoinTokenRequest, JoinTokenMessage];
  };
  LocalAuthorityService: {
    ListAuthorities: [AuthorityKindRequest, ListAuthoritiesResponse];
    Prepare: [AuthorityKindRequest, AuthorityMessage];
    Activate: [AuthorityKindRequest, AuthorityMessage];
    Taint: [AuthorityKeyRequest, AuthorityMessage];
    Revoke: [AuthorityKeyRequest, AuthorityMessage];
  };
  BundleService: {
    GetBundle: [Empty, BundleMessage];
    ListFederatedBundles: [Empty, ListFederatedBundlesResponse];
    SetFederatedBundle: [SetFederatedBundleRequest, BundleMessage];
    DeleteFederatedBundle: [DeleteFederatedBundleRequest, BundleMessage];
  };
  SvidService: {
    MintX509Svid: [MintX509SvidRequest, MintX509SvidResponse];
    MintJwtSvid: [MintJwtSvidRequest, MintJwtSvidResponse];
  };
  ProfileService: {
    ListProfiles: [Empty, ListProfilesResponse];
    GetProfile: [GetProfileRequest, ProfileMessage];
    GetNodeEventLog: [AgentIdRequest, NodeEventLogMessage];
  };
  FederationService: {
    ListFederationRelationships: [Empty, ListFederationRelationshipsResponse];
    GetFederationRelationship: [FederationTrustDomainRequest, FederationRelationshipMessage];
    CreateFederationRelationship: [FederationRelationshipRequest, FederationRelationshipMessage];
    UpdateFederationRelationship: [FederationRelationshipRequest, FederationRelationshipMessage];
    DeleteFederationRelationship: [FederationTrustDomainRequest, FederationRelationshipMessage];
  };
}

export interface ProfileMessage {
  name: string;
  file: string;
  pcrs: number[];
  default: boolean;
  description: string;
  yaml: string;
}

export interface ListProfilesResponse {
  mode: 'none' | 'profiles';
  profiles: ProfileMessage[];
}

export interface NodeEventLogMessage {
  spiffe_id: string;
  event_log: Buffer;
}

export interface GetProfileRequest {
  name: string;
}

export type ServiceName = keyof AdminApi;

/** What a client may send: protobuf fills every field left out with its default. */
export type DeepPartial<T> = T extends (infer U)[]
  ? DeepPartial<U>[]
  : T extends object
    ? { [K in keyof T]?: DeepPartial<T[K]> }
    : T;
