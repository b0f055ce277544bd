/**
 * Why fetching a foreign trust domain's bundle was refused. Each code names one check of SPIFFE
 * Federation §5 (or a limit of ours); the message names the endpoint URL and what to fix.
 *
 * @module
 */
import { printableUrl } from '../../host/index.js';

export type FederationErrorCode =
  /** The URL is not an absolute https:// URL (§5.2.1.1, §5.2.2.1). */
  | 'ERR_FEDERATION_URL_NOT_HTTPS'
  /** https_spiffe without a stored bundle of the foreign trust domain to authenticate the endpoint with. */
  | 'ERR_FEDERATION_BUNDLE_MISSING'
  /** https_spiffe, and the stored bundle fails today's checks (an older server stored it). */
  | 'ERR_FEDERATION_STORED_BUNDLE_REFUSED'
  /** https_spiffe without an endpoint SPIFFE ID, or one outside the foreign trust domain. */
  | 'ERR_FEDERATION_ENDPOINT_ID_INVALID'
  /** The server certificate does not chain to the trusted roots (or names another host, https_web). */
  | 'ERR_FEDERATION_TLS'
  /** https_spiffe: the server certificate does not carry exactly the endpoint SPIFFE ID. */
  | 'ERR_FEDERATION_ENDPOINT_ID_MISMATCH'
  /** The endpoint answered with a redirect; redirects are never followed (§7.5.1). */
  | 'ERR_FEDERATION_REDIRECT'
  /** The endpoint answered with a status other than 200. */
  | 'ERR_FEDERATION_HTTP_STATUS'
  /** The response was larger than the cap. */
  | 'ERR_FEDERATION_TOO_LARGE'
  /** The response was not JSON (by content type or by content). */
  | 'ERR_FEDERATION_NOT_JSON'
  /** The document is not a valid SPIFFE bundle (the SpiffeError code is in the message). */
  | 'ERR_FEDERATION_BAD_BUNDLE'
  /** The document's authorities belong to another trust domain. */
  | 'ERR_FEDERATION_WRONG_TRUST_DOMAIN'
  /** No answer within the timeout. */
  | 'ERR_FEDERATION_TIMEOUT'
  /** The connection failed (refused, reset, name not resolved). */
  | 'ERR_FEDERATION_UNREACHABLE'
  /** A relationship names the server's own trust domain, whose bundle is never fetched. */
  | 'ERR_FEDERATION_OWN_TRUST_DOMAIN'
  /** The endpoint served a lower spiffe_sequence than it served before (a stale replica or cache). */
  | 'ERR_FEDERATION_STALE_BUNDLE';

export class FederationError extends Error {
  readonly code: FederationErrorCode;
  /** The bundle endpoint URL the refusal is about. */
  readonly url: string;

  constructor(code: FederationErrorCode, url: string, message: string, options?: { cause?: unknown }) {
    // Messages are logged: a query can carry a token, user information a password.
    const shown = printableUrl(url);
    super(`${shown}: ${message}`, options);
    this.name = 'FederationError';
    this.code = code;
    this.url = shown;
  }
}
