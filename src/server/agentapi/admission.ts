/**
 * Which agent SVIDs the agent API still accepts. A node holds one current certificate, and after a
 * renewal also the new one it was just issued; the agent's first call with the new one makes it
 * current and the old one is refused from then on (SPIRE's cert_serial_number and
 * new_cert_serial_number). A full attestation (again, or after eviction) records only the
 * certificate it issued, so every earlier one is refused at once. A copied agent certificate thus
 * dies the moment the real agent renews and uses its new one.
 *
 * @module
 */
import { X509Certificate } from 'node:crypto';
import { BundleSet, type SpiffeBundle, verifyX509Svid } from '../../spiffe/index.js';
import type { CertificateAuthority } from '../ca/authority.js';
import type { Clock } from '../clock.js';
import type { AttestedNode, Datastore } from '../datastore/datastore.js';
import type { Logger } from '../log.js';
import { AttestationError } from '../nodeattestor/errors.js';
import { type AdmittedNodeFields, type NodeSource, storedNodes } from './nodes.js';

const ACTOR = 'agent-api';

/**
 * An agent certificate that passed verification, and what that verdict rests on: the bundle object
 * it was verified against (the CA builds one per journal state, so rotation, taint, revoke and
 * pruning each bring a new one), the trust domain it was judged an agent of, and the validity
 * windows of the chain it was verified through (leaf and root), in ms.
 */
interface Verified {
  readonly bundle: SpiffeBundle;
  readonly trustDomain: string;
  readonly agentId: string;
  readonly windows: readonly (readonly [notBefore: number, notAfter: number])[];
}

/** A presented agent certificate, parsed once, with its last verdict when it passed. */
interface KnownCertificate {
  readonly certificate: X509Certificate;
  verified?: Verified;
}

/**
 * Agent certificates by their DER. An agent presents the same SVID on every call until it renews;
 * parsing it (OpenSSL, then @peculiar/x509 for the SPIFFE checks) and verifying its chain were most
 * of what authenticating a call cost. Bounded, oldest out first, since every agent's certificate
 * would otherwise stay forever. The bound holds every agent's SVID, and the renewed one beside it,
 * for thousands of agents: with fewer places than agents, agents syncing in turn push each other
 * out and every call parses again (at 5000 agents and a bound of 1024 that was 60 % of the
 * server's CPU). A few KiB each.
 */
const knownAgentCertificates = new Map<string, KnownCertificate>();
const MAX_KNOWN_AGENT_CERTIFICATES = 16_384;

function knownCertificate(raw: Buffer): KnownCertificate {
  const key = raw.toString('base64');
  let known = knownAgentCertificates.get(key);
  if (known === undefined) {
    known = { certificate: new X509Certificate(raw) };
    if (knownAgentCertificates.size >= MAX_KNOWN_AGENT_CERTIFICATES) {
      const oldest = knownAgentCertificates.keys().next();
      if (oldest.done !== true) knownAgentCertificates.delete(oldest.value);
    }
    knownAgentCertificates.set(key, known);
  }
  return known;
}

/**
 * The agent ID a certificate was verified as, if that verdict still holds: same bundle object, same
 * trust domain, and `time` inside every validity window of its chain (as verifyX509Svid judges:
 * from notBefore to notAfter, both included). Chain, signatures and extensions depend only on the
 * certificate's bytes and the bundle's; time is the one input that moves without them.
 */
function stillVerified(
  verified: Verified | undefined,
  bundle: SpiffeBundle,
  trustDomain: string,
  time: number,
): string | undefined {
  if (verified === undefined || verified.bundle !== bundle || verified.trustDomain !== trustDomain) return;
  for (const [notBefore, notAfter] of verified.windows) if (time < notBefore || time > notAfter) return;
  return verified.agentId;
}

export interface AdmissionOptions {
  trustDomain: string;
  ca: CertificateAuthority;
  datastore: Datastore;
  clock: Clock;
  logger: Logger;
}

export interface Caller {
  getAuthContext(): { sslPeerCertificate?: { raw?: Buffer } };
}

/**
 * The attested node behind the caller's agent SVID: verified, of a node still attested and not
 * banned, and the node's current (or just renewed) certificate, read from the store. `method`
 * names the call in the log.
 */
export async function admitAgent(call: Caller, o: AdmissionOptions, method: string): Promise<AttestedNode> {
  const { agentId, serial } = authenticateAgent(call, o.ca, o.trustDomain, o.clock);
  return admitNode(agentId, serial, o, method, storedNodes(o.datastore));
}

/** The caller's agent, and the serial number of the certificate it presented. */
export interface AuthenticatedAgent {
  readonly agentId: string;
  /** As the CA recorded it when it signed the certificate. */
  readonly serial: string;
}

/**
 * The agent named by the caller's client certificate, verified against today's bundle. TLS only
 * asked for the certificate; anything chaining to the bundle would pass it, so the ID must be an
 * agent's (not a workload's or the server's). The certificate is parsed once for both answers, and
 * kept with its verdict for the agent's next call (every sync call of every agent comes through
 * here): the next call re-checks only the validity windows while the bundle object is the same, and
 * verifies the whole chain again against any other bundle.
 */
export function authenticateAgent(
  call: Caller,
  ca: CertificateAuthority,
  trustDomain: string,
  clock: Clock,
): AuthenticatedAgent {
  const peer = call.getAuthContext().sslPeerCertificate;
  if (peer?.raw === undefined)
    throw new AttestationError(
      'ERR_AGENT_UNAUTHENTICATED',
      'this call needs the agent SVID as TLS client certificate; attest first',
    );
  try {
    const known = knownCertificate(peer.raw);
    const bundle = ca.bundle();
    const now = clock.now();
    const kept = stillVerified(known.verified, bundle, trustDomain, now);
    if (kept !== undefined) return { agentId: kept, serial: known.certificate.serialNumber };
    known.verified = undefined;
    const { id, chain } = verifyX509Svid([known.certificate], new BundleSet([bundle]), {
      time: new Date(now),
    });
    if (id.trustDomain.name !== trustDomain || !id.path.startsWith('/agent/'))
      throw new Error(`${id.toString()} is not an agent of ${trustDomain}`);
    const agentId = id.toString();
    const windows = chain.map((c) => [Date.parse(c.validFrom), Date.parse(c.validTo)] as const);
    // A date Node printed in a form Date.parse does not read would compare false both ways, so the
    // verdict would never expire: such a certificate is verified again on every call instead.
    if (windows.every((w) => w.every(Number.isFinite)))
      known.verified = { bundle, trustDomain, agentId, windows };
    return { agentId, serial: known.certificate.serialNumber };
  } catch (cause) {
    throw new AttestationError(
      'ERR_AGENT_UNAUTHENTICATED',
      `the client certificate is not a valid agent SVID (${(cause as Error).message}); attest again`,
      { cause },
    );
  }
}

/**
 * The node `agentId` names, read from `nodes`, if the certificate with `serial` may still speak for
 * it.
 */
export async function admitNode<N extends AdmittedNodeFields>(
  agentId: string,
  serial: string,
  o: AdmissionOptions,
  method: string,
  nodes: NodeSource<N>,
): Promise<N> {
  let node = attested(await nodes.node(agentId));
  refuseBanned(agentId, node.banned);
  if (serial === node.serialNumber) return node;
  if (serial === node.newSerialNumber) {
    if (await o.datastore.promoteNodeSerial(agentId, serial, ACTOR))
      o.logger.info(
        { agent_id: agentId, method, serial_number: serial, superseded_serial_number: node.serialNumber },
        'agent uses its renewed SVID: the one it replaced is refused from now on',
      );
    // Promoted by this call or another, or the node attested again meanwhile: judge by what is
    // stored now.
    node = attested(await nodes.storedNode(agentId));
    refuseBanned(agentId, node.banned);
    if (serial === node.serialNumber) return node;
  }
  o.logger.warn(
    {
      agent_id: agentId,
      method,
      result: 'refused',
      reason: 'ERR_AGENT_CERT_SUPERSEDED',
      presented_serial: serial,
      current_serial: node.serialNumber,
      ...(node.newSerialNumber !== undefined ? { new_serial: node.newSerialNumber } : {}),
    },
    'agent SVID superseded: a later attestation or renewal replaced it',
  );
  throw new AttestationError(
    'ERR_AGENT_CERT_SUPERSEDED',
    `agent ${agentId} presented the SVID with serial ${serial}, which a later attestation or renewal of this node replaced (current serial ${node.serialNumber}); use the newest agent SVID, or attest again — if this agent did not renew, its certificate was copied`,
  );
}

function attested<N>(node: N | undefined): N {
  if (node === undefined)
    throw new AttestationError(
      'ERR_AGENT_NOT_ATTESTED',
      'this agent is not attested (evicted, or never was); attest again',
    );
  return node;
}

export function refuseBanned(agentId: string, banned: boolean): void {
  if (banned)
    throw new AttestationError(
      'ERR_ATTEST_BANNED',
      `agent ${agentId} is banned; an operator must run "ironroot-server agent unban" first`,
    );
}
