/**
 * The admin API's CA operations: local authorities, bundles (own and federated) and SVIDs minted
 * for operators (`x509 mint`, `jwt mint`).
 *
 * @module
 */

import type { Counter } from 'prom-client';
import { toPem } from '../../spiffe/der.js';
import {
  checkJwtSvidAudience,
  isSpiffeError,
  parseCsr,
  SpiffeBundle,
  SpiffeError,
  SpiffeId,
  TrustDomain,
  X509Bundle,
} from '../../spiffe/index.js';
import type {
  AgentReadinessMessage,
  AuthorityKeyRequest,
  AuthorityKindRequest,
  AuthorityMessage,
  BundleMessage,
  DeleteFederatedBundleRequest,
  ListAuthoritiesResponse,
  ListFederatedBundlesResponse,
  MintJwtSvidRequest,
  MintJwtSvidResponse,
  MintX509SvidRequest,
  MintX509SvidResponse,
  SetFederatedBundleRequest,
} from '../admin/messages.js';
import { SVID_TTL_MAX_SECONDS } from '../config/defaults.js';
import type { Actor, BundleDeleteMode, CaSlot, Datastore, StoredBundle } from '../datastore/datastore.js';
import {
  BundleNotFoundError,
  CaError,
  InvalidArgumentError,
  ServerError,
  TtlOutOfRangeError,
} from '../errors.js';
import type { Logger } from '../log.js';
import { checkIssuableId, isTrustDomainName } from '../registration/ids.js';
import type { AuthorityKind, CertificateAuthority } from './authority.js';
import { logJwtIssued, logX509Issued } from './issuance-log.js';

/** Agents named in a readiness answer at most; the count covers the rest. */
const MAX_BEHIND_LISTED = 100;

export interface CaServiceOptions {
  ca: CertificateAuthority;
  datastore: Datastore;
  trustDomain: string;
  defaultX509SvidTtl: number;
  defaultJwtSvidTtl: number;
  logger: Logger;
  /** SVIDs minted through the admin API. */
  svidsIssued: Counter<'kind' | 'issued_to'>;
}

export class CaService {
  readonly #o: CaServiceOptions;

  constructor(options: CaServiceOptions) {
    this.#o = options;
  }

  async listAuthorities(request: AuthorityKindRequest): Promise<ListAuthoritiesResponse> {
    const kind = checkKind(request.kind);
    // Another server sharing the datastore may have rotated since this one last looked.
    await this.#o.ca.refresh();
    return {
      authorities: this.#o.ca.slots.filter((s) => s.authority === kind).map(toAuthority),
      readiness: kind === 'x509' ? await this.#readiness() : null,
    };
  }

  async prepare(request: AuthorityKindRequest, actor: Actor): Promise<AuthorityMessage> {
    return toAuthority(await this.#o.ca.prepare(checkKind(request.kind), actor));
  }

  async activate(request: AuthorityKindRequest, actor: Actor): Promise<AuthorityMessage> {
    return this.#answer(await this.#o.ca.activate(checkKind(request.kind), actor));
  }

  async taint(request: AuthorityKeyRequest, actor: Actor): Promise<AuthorityMessage> {
    return this.#answer(await this.#o.ca.taint(checkKind(request.kind), request.authority_id, actor));
  }

  /**
   * Revoking an X.509 CA is refused while some agent does not hold an SVID from the active CA: that
   * agent may not have the active CA in its bundle, and once the revoked key is gone the server
   * presents nothing it can verify. `force` revokes anyway.
   */
  async revoke(request: AuthorityKeyRequest, actor: Actor): Promise<AuthorityMessage> {
    const kind = checkKind(request.kind);
    await this.#o.ca.refresh();
    const slot = this.#o.ca.slots.find((s) => s.authority === kind && s.keyId === request.authority_id);
    // Unknown, in-use and untainted keys are refused by the CA itself, with their own codes.
    if (kind === 'x509' && slot?.state === 'old' && slot.tainted && request.force !== true) {
      const readiness = await this.#readiness();
      const behind = readiness.agents - readiness.current;
      if (behind > 0) {
        const more = behind > readiness.behind.length ? ` and ${behind - readiness.behind.length} more` : '';
        throw new CaError(
          'ERR_CA_REVOKE_STRANDS_AGENTS',
          `revoking ${request.authority_id} would cut off ${behind} of ${readiness.agents} agent(s) that have not renewed under the active CA ${readiness.active_authority_id}: ${readiness.behind.join(', ')}${more}. Running agents renew at their next sync; start the stopped ones, evict those that are gone ("agent evict"), or pass --force (each agent cut off then needs the current bundle in its data_dir, and a join-token agent a new token)`,
        );
      }
    }
    return this.#answer(await this.#o.ca.revoke(kind, request.authority_id, actor));
  }

  async #answer(slot: CaSlot): Promise<AuthorityMessage> {
    return { ...toAuthority(slot), readiness: slot.authority === 'x509' ? await this.#readiness() : null };
  }

  /** Which agents hold an SVID from the active X.509 CA, and which do not (banned ones left out). */
  async #readiness(): Promise<AgentReadinessMessage> {
    const active = this.#o.ca.slots.find((s) => s.authority === 'x509' && s.state === 'active');
    const nodes = (await this.#o.datastore.listNodes()).filter((n) => !n.banned);
    const behind = nodes
      .filter((n) => active === undefined || n.svidAuthority !== active.keyId)
      .map((n) => n.spiffeId)
      .sort();
    return {
      active_authority_id: active?.keyId ?? '',
      agents: nodes.length,
      current: nodes.length - behind.length,
      behind: behind.slice(0, MAX_BEHIND_LISTED),
    };
  }

  async getBundle(): Promise<BundleMessage> {
    await this.#o.ca.refresh();
    const bundle = this.#o.ca.bundle();
    return {
      trust_domain: this.#o.trustDomain,
      document: bundle.marshal(),
      x509_pem: bundle.x509Authorities.map((c) => c.toString()).join(''),
      sequence: Number(bundle.sequenceNumber ?? 0n),
      refused: '',
      endpoint_sequence: '',
    };
  }

  async listFederatedBundles(): Promise<ListFederatedBundlesResponse> {
    const stored = (await this.#o.datastore.listBundles()).filter((b) => b.federated);
    return { bundles: stored.map(toBundleMessage) };
  }

  async setFederatedBundle(request: SetFederatedBundleRequest, actor: Actor): Promise<BundleMessage> {
    const td = this.#foreignTrustDomain(request.trust_domain);
    let bundle: SpiffeBundle;
    try {
      if (request.format === 'pem') {
        bundle = new SpiffeBundle(td, {
          x509Authorities: X509Bundle.parsePem(td, request.document).authorities,
        });
      } else if (request.format === 'spiffe' || request.format === '') {
        bundle = SpiffeBundle.parse(td, request.document);
      } else {
        throw new InvalidArgumentError(`format ${JSON.stringify(request.format)}: allowed "spiffe" or "pem"`);
      }
    } catch (error) {
      if (isSpiffeError(error))
        throw new InvalidArgumentError(
          `bundle for ${td.name} is not valid (${error.code}): ${error.message}`,
        );
      throw error;
    }
    return toBundleMessage(await this.#o.datastore.setFederatedBundle(td.name, bundle.marshal(), actor));
  }

  async deleteFederatedBundle(request: DeleteFederatedBundleRequest, actor: Actor): Promise<BundleMessage> {
    const td = this.#foreignTrustDomain(request.trust_domain);
    const mode = bundleDeleteMode(request.mode);
    const stored = await this.#o.datastore.getBundle(td.name);
    if (stored === undefined || !stored.federated) throw new BundleNotFoundError(td.name);
    await this.#o.datastore.deleteFederatedBundle(td.name, actor, mode);
    return toBundleMessage(stored);
  }

  async mintX509Svid(request: MintX509SvidRequest): Promise<MintX509SvidResponse> {
    let csr: Awaited<ReturnType<typeof parseCsr>>;
    try {
      csr = await parseCsr(request.csr);
    } catch (error) {
      if (isSpiffeError(error))
        throw new ServerError('ERR_CSR_INVALID', `the CSR was refused: ${error.message}`);
      throw error;
    }
    checkIssuableId('spiffe_id', csr.spiffeId.toString(), this.#o.trustDomain);
    const minted = await this.#o.ca.mintX509Svid({
      spiffeId: csr.spiffeId,
      publicKey: csr.publicKey,
      ttl: checkTtl(request.ttl, this.#o.defaultX509SvidTtl),
      dnsNames: csr.dnsNames,
    });
    this.#o.svidsIssued.inc({ kind: 'x509', issued_to: 'admin' });
    logX509Issued(this.#o.logger, 'admin', csr.spiffeId.toString(), minted);
    return { chain: [...minted.chainDer], expires_at: minted.expiresAt };
  }

  async mintJwtSvid(request: MintJwtSvidRequest): Promise<MintJwtSvidResponse> {
    const id = SpiffeId.parse(checkIssuableId('spiffe_id', request.spiffe_id, this.#o.trustDomain));
    if (request.audience.length === 0 || request.audience.some((a) => a === '')) {
      throw new InvalidArgumentError('a JWT-SVID needs at least one non-empty audience (--audience)');
    }
    try {
      checkJwtSvidAudience(request.audience);
    } catch (error) {
      if (isSpiffeError(error)) throw new InvalidArgumentError(`${error.code}: ${error.message}`);
      throw error;
    }
    const minted = await this.#o.ca.mintJwtSvid({
      spiffeId: id,
      audience: request.audience,
      ttl: checkTtl(request.ttl, this.#o.defaultJwtSvidTtl),
    });
    this.#o.svidsIssued.inc({ kind: 'jwt', issued_to: 'admin' });
    logJwtIssued(this.#o.logger, 'admin', {
      spiffeId: id.toString(),
      audience: request.audience,
      expiresAt: minted.expiresAt,
    });
    return { token: minted.token, expires_at: minted.expiresAt };
  }

  #foreignTrustDomain(name: string): TrustDomain {
    if (!isTrustDomainName(name)) {
      throw new InvalidArgumentError(
        `trust domain ${JSON.stringify(name)} is not a trust domain name (lowercase letters, digits, ".", "-", "_")`,
      );
    }
    if (name === this.#o.trustDomain) {
      throw new InvalidArgumentError(
        `${name} is this server's own trust domain; its bundle is managed by the CA`,
      );
    }
    return TrustDomain.parse(name);
  }
}

function checkKind(kind: string): AuthorityKind {
  if (kind === 'x509' || kind === 'jwt') return kind;
  throw new InvalidArgumentError(`authority kind ${JSON.stringify(kind)}: allowed "x509" or "jwt"`);
}

function checkTtl(ttl: number, fallback: number): number {
  if (ttl === 0) return fallback;
  if (!Number.isInteger(ttl) || ttl < 1 || ttl > SVID_TTL_MAX_SECONDS) {
    throw new TtlOutOfRangeError('ttl', ttl, 0, SVID_TTL_MAX_SECONDS);
  }
  return ttl;
}

function toAuthority(slot: CaSlot): AuthorityMessage {
  const der = slot.certificateDer;
  return {
    kind: slot.authority,
    authority_id: slot.keyId,
    slot: slot.slot,
    state: slot.state,
    not_before: slot.notBefore,
    not_after: slot.notAfter,
    tainted: slot.tainted,
    certificate_pem: der ? toPem('CERTIFICATE', der) : '',
  };
}

const BUNDLE_DELETE_MODES: readonly BundleDeleteMode[] = ['restrict', 'dissociate', 'delete'];

function bundleDeleteMode(mode: string): BundleDeleteMode {
  if (mode === '') return 'restrict';
  const known = BUNDLE_DELETE_MODES.find((m) => m === mode);
  if (known === undefined)
    throw new ServerError(
      'ERR_INVALID_ARGUMENT',
      `mode ${JSON.stringify(mode)}: allowed ${BUNDLE_DELETE_MODES.map((m) => `"${m}"`).join(', ')}`,
    );
  return known;
}

/** A stored bundle that fails today's checks is still listed, with why, so that it can be replaced. */
function toBundleMessage(stored: StoredBundle): BundleMessage {
  const bundle = SpiffeBundle.parseOrRefusal(stored.trustDomain, stored.document);
  const refused = bundle instanceof SpiffeError;
  return {
    trust_domain: stored.trustDomain,
    document: stored.document,
    x509_pem: refused ? '' : bundle.x509Authorities.map((c) => c.toString()).join(''),
    sequence: stored.sequence,
    refused: refused ? `${bundle.code}: ${bundle.message}` : '',
    endpoint_sequence: stored.endpointSequence?.toString() ?? '',
  };
}
