/**
 * One debug line per SVID the server signs, so an operator can trace any certificate or token back
 * to its issuance: the SPIFFE ID, the serial (X.509) or audience (JWT), and the expiry. Keys and
 * tokens are never passed here.
 *
 * @module
 */
import type { X509Certificate } from 'node:crypto';
import type { Logger } from '../log.js';

export type IssuedTo = 'agent' | 'workload' | 'admin';

/**
 * Logs an X.509-SVID by its leaf; `context` says who asked (agent_id, entry_id). The serial is hex
 * as openssl and `agent show` print it. The leaf is read (and so parsed) only when debug lines are
 * written: the issuing APIs otherwise send its bytes without parsing it.
 */
export function logX509Issued(
  logger: Logger,
  issuedTo: IssuedTo,
  spiffeId: string,
  minted: { readonly chain: readonly X509Certificate[] },
  context: Record<string, string> = {},
): void {
  if (!logger.isLevelEnabled('debug')) return;
  const leaf = minted.chain[0];
  if (leaf === undefined) return;
  logger.debug(
    {
      ...context,
      issued_to: issuedTo,
      spiffe_id: spiffeId,
      serial: leaf.serialNumber,
      expires_at: new Date(leaf.validTo).toISOString(),
    },
    `${issuedTo} X.509-SVID issued`,
  );
}

/** Logs a JWT-SVID by its claims, never the token. */
export function logJwtIssued(
  logger: Logger,
  issuedTo: IssuedTo,
  svid: { spiffeId: string; audience: readonly string[]; expiresAt: number },
  context: Record<string, string> = {},
): void {
  logger.debug(
    {
      ...context,
      issued_to: issuedTo,
      spiffe_id: svid.spiffeId,
      audience: [...svid.audience],
      expires_at: new Date(svid.expiresAt * 1000).toISOString(),
    },
    `${issuedTo} JWT-SVID issued`,
  );
}
