/**
 * Federation relationships as the admin API manages them (`federation create|list|show|update|
 * delete`): each names a foreign trust domain, the https:// endpoint its bundle is fetched from and
 * how that endpoint is authenticated. Also the rule entries follow: an entry may federate only with
 * a trust domain the server can give a bundle for.
 *
 * @module
 */
import { isSpiffeError, SpiffeBundle, SpiffeId, TrustDomain, X509Bundle } from '../../spiffe/index.js';
import type {
  FederationRelationshipMessage,
  FederationRelationshipRequest,
  FederationTrustDomainRequest,
  ListFederationRelationshipsResponse,
} from '../admin/messages.js';
import type {
  Actor,
  Datastore,
  FederationRelationship,
  InitialBundle,
  NewFederationRelationship,
  StoredBundle,
} from '../datastore/datastore.js';
import {
  FederatesWithUnknownError,
  FederationBundleMissingError,
  FederationInvalidError,
  FederationNotFoundError,
  FederationOwnTrustDomainError,
} from '../errors.js';
import { isTrustDomainName } from './ids.js';

/** Longer URLs are refused: no real endpoint needs one, and each poll would carry it. */
const MAX_URL_LENGTH = 2048;

export class FederationRegistry {
  readonly #store: Datastore;
  readonly #trustDomain: string;

  constructor(store: Datastore, trustDomain: string) {
    this.#store = store;
    this.#trustDomain = trustDomain;
  }

  async list(): Promise<ListFederationRelationshipsResponse> {
    const relationships = await this.#store.listFederationRelationships();
    const bundles = new Map((await this.#store.listBundles()).map((b) => [b.trustDomain, b]));
    return { relationships: relationships.map((r) => toMessage(r, bundles.get(r.trustDomain))) };
  }

  async get(request: FederationTrustDomainRequest): Promise<FederationRelationshipMessage> {
    const trustDomain = this.#checkTrustDomain(request.trust_domain);
    const relationship = await this.#store.getFederationRelationship(trustDomain);
    if (relationship === undefined) throw new FederationNotFoundError(trustDomain);
    return toMessage(relationship, await this.#store.getBundle(trustDomain));
  }

  async create(request: FederationRelationshipRequest, actor: Actor): Promise<FederationRelationshipMessage> {
    const { relationship, bundle } = await this.#checkRequest(request);
    const created = await this.#store.createFederationRelationship(relationship, actor, bundle);
    return toMessage(created, await this.#store.getBundle(created.trustDomain));
  }

  async update(request: FederationRelationshipRequest, actor: Actor): Promise<FederationRelationshipMessage> {
    // An unknown trust domain is "not found", whatever else is wrong with the request.
    const trustDomain = this.#checkTrustDomain(request.relationship?.trust_domain ?? '');
    if ((await this.#store.getFederationRelationship(trustDomain)) === undefined)
      throw new FederationNotFoundError(trustDomain);
    const { relationship, bundle } = await this.#checkRequest(request);
    const updated = await this.#store.updateFederationRelationship(relationship, actor, bundle);
    return toMessage(updated, await this.#store.getBundle(updated.trustDomain));
  }

  async delete(request: FederationTrustDomainRequest, actor: Actor): Promise<FederationRelationshipMessage> {
    const trustDomain = this.#checkTrustDomain(request.trust_domain);
    const deleted = await this.#store.deleteFederationRelationship(trustDomain, actor);
    return toMessage(deleted, await this.#store.getBundle(trustDomain));
  }

  /** Trust domains an entry may federate with: those with a relationship or a stored bundle. */
  async knownTrustDomains(): Promise<Set<string>> {
    const related = (await this.#store.listFederationRelationships()).map((r) => r.trustDomain);
    const bundled = (await this.#store.listBundles()).filter((b) => b.federated).map((b) => b.trustDomain);
    return new Set([...related, ...bundled]);
  }

  async #checkRequest(
    request: FederationRelationshipRequest,
  ): Promise<{ relationship: NewFederationRelationship; bundle?: InitialBundle }> {
    const message = request.relationship;
    if (message === null) throw new FederationInvalidError('relationship', 'the request carries none');
    const trustDomain = this.#checkTrustDomain(message.trust_domain);
    const td = TrustDomain.parse(trustDomain);
    const bundleEndpointUrl = checkUrl(message.bundle_endpoint_url);
    const bundle = parseBundle(td, request.trust_domain_bundle, request.trust_domain_bundle_format);
    const profile = message.bundle_endpoint_profile;
    if (profile === 'https_web') {
      if (message.endpoint_spiffe_id !== '')
        throw new FederationInvalidError(
          'endpoint_spiffe_id',
          'profile https_web authenticates the endpoint by Web PKI, not by SPIFFE ID; give no --endpoint-spiffe-id, or use profile https_spiffe',
        );
      return {
        relationship: { trustDomain, bundleEndpointUrl, profile },
        ...(bundle ? { bundle: { document: bundle.marshal() } } : {}),
      };
    }
    if (profile !== 'https_spiffe')
      throw new FederationInvalidError(
        'bundle_endpoint_profile',
        `${JSON.stringify(profile)}: allowed "https_web" or "https_spiffe"`,
      );
    const endpointSpiffeId = checkEndpointId(message.endpoint_spiffe_id, trustDomain);
    const authorities = bundle ?? (await this.#storedBundle(td));
    if (authorities === undefined) throw new FederationBundleMissingError(trustDomain);
    if (authorities.x509Authorities.length === 0)
      throw new FederationInvalidError(
        'trust_domain_bundle',
        `the ${bundle ? 'given' : 'stored'} bundle of ${trustDomain} has no X.509 authorities, so it cannot authenticate the https_spiffe endpoint; give one that has`,
      );
    return {
      relationship: { trustDomain, bundleEndpointUrl, profile, endpointSpiffeId },
      ...(bundle ? { bundle: { document: bundle.marshal() } } : {}),
    };
  }

  async #storedBundle(td: TrustDomain): Promise<SpiffeBundle | undefined> {
    const stored = await this.#store.getBundle(td.name);
    if (!stored?.federated) return undefined;
    const bundle = SpiffeBundle.parseOrRefusal(td.name, stored.document);
    if (!isSpiffeError(bundle)) return bundle;
    throw new FederationInvalidError(
      'trust_domain_bundle',
      `the stored bundle of ${td.name} fails this server's checks (${bundle.code}: ${bundle.message}), so it cannot authenticate the https_spiffe endpoint; give one that passes`,
    );
  }

  #checkTrustDomain(name: string): string {
    if (!isTrustDomainName(name))
      throw new FederationInvalidError(
        'trust_domain',
        `${JSON.stringify(name)} is not a trust domain name (lowercase letters, digits, ".", "-", "_"), e.g. partner.org`,
      );
    if (name === this.#trustDomain) throw new FederationOwnTrustDomainError(name);
    return name;
  }
}

/**
 * Throws FederatesWithUnknownError naming the trust domains of `wanted` that are not `known` (see
 * FederationRegistry.knownTrustDomains, read once for a whole batch).
 */
export function refuseUnknownTrustDomains(wanted: readonly string[], known: ReadonlySet<string>): void {
  const unknown = wanted.filter((td) => !known.has(td));
  if (unknown.length > 0) throw new FederatesWithUnknownError(unknown);
}

/** An https:// URL without credentials or fragment (SPIFFE federation §5: the endpoint is HTTPS). */
function checkUrl(text: string): string {
  const refuse = (why: string) =>
    new FederationInvalidError('bundle_endpoint_url', `${JSON.stringify(text)} ${why}`);
  if (text.length > MAX_URL_LENGTH) throw refuse(`is longer than ${MAX_URL_LENGTH} characters`);
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    throw refuse('is not a URL; give the endpoint as https://host[:port]/path');
  }
  if (url.protocol !== 'https:') throw refuse('is not an https:// URL; bundle endpoints are served over TLS');
  if (url.username !== '' || url.password !== '')
    throw refuse('carries credentials (user:password@); bundle endpoints take none');
  // URL drops an empty fragment ("…#"), so the text is what tells.
  if (text.includes('#')) throw refuse('has a fragment (#…); give the URL without it');
  return url.href;
}

/** The endpoint's SPIFFE ID: a workload ID (with a path) in the relationship's trust domain. */
function checkEndpointId(text: string, trustDomain: string): string {
  if (text === '')
    throw new FederationInvalidError(
      'endpoint_spiffe_id',
      `profile https_spiffe needs the endpoint server's SPIFFE ID (--endpoint-spiffe-id), e.g. spiffe://${trustDomain}/spire/server`,
    );
  let id: SpiffeId;
  try {
    id = SpiffeId.parse(text);
  } catch (error) {
    if (isSpiffeError(error))
      throw new FederationInvalidError('endpoint_spiffe_id', `${JSON.stringify(text)}: ${error.message}`);
    throw error;
  }
  if (id.trustDomain.name !== trustDomain)
    throw new FederationInvalidError(
      'endpoint_spiffe_id',
      `${text} is not in ${trustDomain}: ironroot authenticates the endpoint with the bundle of ${trustDomain}, which can vouch only for IDs of that trust domain`,
    );
  if (id.isTrustDomainId)
    throw new FederationInvalidError(
      'endpoint_spiffe_id',
      `${text} has no path; give the endpoint server's own ID, e.g. spiffe://${trustDomain}/spire/server`,
    );
  return id.toString();
}

/** The bundle given with a create or update, parsed as `bundle set` does; undefined when none. */
function parseBundle(td: TrustDomain, document: string, format: string): SpiffeBundle | undefined {
  if (document === '') {
    if (format !== '')
      throw new FederationInvalidError(
        'trust_domain_bundle_format',
        'given without a bundle; give the bundle too (--trust-domain-bundle-path)',
      );
    return undefined;
  }
  try {
    if (format === 'pem')
      return new SpiffeBundle(td, { x509Authorities: X509Bundle.parsePem(td, document).authorities });
    if (format === 'spiffe' || format === '') return SpiffeBundle.parse(td, document);
  } catch (error) {
    if (isSpiffeError(error))
      throw new FederationInvalidError(
        'trust_domain_bundle',
        `the bundle for ${td.name} is not valid ${format === 'pem' ? 'PEM' : 'SPIFFE bundle JSON'} (${error.code}): ${error.message}`,
      );
    throw error;
  }
  throw new FederationInvalidError(
    'trust_domain_bundle_format',
    `${JSON.stringify(format)}: allowed "spiffe" or "pem"`,
  );
}

function toMessage(
  relationship: FederationRelationship,
  bundle?: StoredBundle,
): FederationRelationshipMessage {
  const stored = bundle?.federated ? bundle : undefined;
  return {
    trust_domain: relationship.trustDomain,
    bundle_endpoint_url: relationship.bundleEndpointUrl,
    bundle_endpoint_profile: relationship.profile,
    endpoint_spiffe_id: relationship.endpointSpiffeId ?? '',
    created_at: relationship.createdAt,
    updated_at: relationship.updatedAt,
    bundle:
      stored === undefined
        ? null
        : {
            sequence: stored.sequence,
            refresh_hint: storedRefreshHint(stored),
            updated_at: stored.updatedAt,
          },
  };
}

/** The stored bundle's refresh hint; 0 when it has none, or fails today's checks (`bundle list` says why). */
function storedRefreshHint(stored: StoredBundle): number {
  const bundle = SpiffeBundle.parseOrRefusal(stored.trustDomain, stored.document);
  return isSpiffeError(bundle) ? 0 : (bundle.refreshHintSeconds ?? 0);
}
