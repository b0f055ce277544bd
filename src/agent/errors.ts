/**
 * Errors of ironroot-agent, each with a stable code. Refusals from the server keep the server's
 * code (e.g. ERR_ATTEST_EK_UNTRUSTED) so the agent's log names exactly what the server objected to.
 *
 * @module
 */
export type AgentErrorCode =
  | 'ERR_AGENT_CONFIG_INVALID'
  | 'ERR_AGENT_CONFIG_FILE'
  | 'ERR_AGENT_CONFIG_UNSAFE'
  | 'ERR_AGENT_STATE'
  | 'ERR_AGENT_SERVER_UNAVAILABLE'
  | 'ERR_AGENT_SERVER_ID_MISMATCH'
  | 'ERR_AGENT_SERVER_SVID_INVALID'
  | 'ERR_AGENT_TRUST_BUNDLE_STALE'
  | 'ERR_AGENT_TRUST_DOMAIN_MISMATCH'
  | 'ERR_AGENT_TRUST_BUNDLE_URL'
  | 'ERR_AGENT_PROTOCOL'
  | 'ERR_AGENT_TPM'
  | 'ERR_AGENT_UNTRUSTED'
  | 'ERR_AGENT_CACHE_INVALID'
  | 'ERR_AGENT_CACHE_VERSION'
  | 'ERR_AGENT_CACHE_FOREIGN_KEY'
  | 'ERR_AGENT_CACHE_WRITE';

export class AgentError extends Error {
  readonly code: string;

  constructor(code: AgentErrorCode | string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = 'AgentError';
  }
}

/**
 * Server answers that mean "your attestation is gone, attest from the start". A superseded SVID is
 * one of them: this node's agent SVID was replaced by an attestation or renewal this agent did not
 * see (its certificate was copied, or it lost the renewal's answer), and only attesting again makes
 * the node's SVID this agent's own.
 */
export const REATTEST_CODES: ReadonlySet<string> = new Set([
  'ERR_AGENT_NOT_ATTESTED',
  'ERR_AGENT_AK_UNKNOWN',
  'ERR_AGENT_UNAUTHENTICATED',
  'ERR_AGENT_CERT_SUPERSEDED',
]);

/**
 * The agent's own refusals of the server (its certificate, or the bundle to check it with): no call
 * gets through until the configuration or the server changes, whichever loop makes it.
 */
export const SERVER_TRUST_CODES: ReadonlySet<string> = new Set([
  'ERR_AGENT_SERVER_ID_MISMATCH',
  'ERR_AGENT_SERVER_SVID_INVALID',
  'ERR_AGENT_TRUST_BUNDLE_STALE',
  'ERR_AGENT_TRUST_DOMAIN_MISMATCH',
  'ERR_AGENT_TRUST_BUNDLE_URL',
]);
