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
import { BundleSet, verifyX509Svid } from '../../spiffe/index.js';
import type { CertificateAuthority } from '../ca/authority.js';
import type { Clock } from '../clock.js';
import type { AttestedNode, Datastore } from '../datastore/datastore.js';
import type { Logger } from '../log.js';
import { AttestationError } from '../nodeattestor/errors.js';

const ACTOR = 'agent-api';

/**
 * Agent certificates parsed, by their DER. An agent presents the same SVID on every call until it
 * renews, and parsing it (OpenSSL, then @peculiar/x509 for the SPIFFE checks) was most of what
 * authenticating a call cost; the checks themselves (chain, signature, validity) still run on every
 * call. Bounded, oldest out first, since every agent's certificate would otherwise stay forever.
 * The bound holds every agent's SVID, and the renewed one beside it, for thousands of agents: with
 * fewer places than agents, agents syncing in turn push each other out and every call parses again
 * (at 5000 agents and a bound of 1024 that was 60 % of the server's CPU). A few KiB each.
 */
const parsedAgentCertificates = new Map<string, X509Certificate>();
const MAX_PARSED_AGENT_CERTIFICATES = 16_384;

function agentCertificate(raw: Buffer): X509Certificate {
  const key = raw.toString('base64');
  let certificate = parsedAgentCertificates.get(key);
  if (certificate === undefined) {
    certificate = new X509Certificate(raw);
    if (parsedAgentCertificates.size >= MAX_PARSED_AGENT_CERTIFICATES) {
      const oldest = parsedAgentCertificates.keys().next();
      if (oldest.done !== true) parsedAgentCertificates.delete(oldest.value);
    }
    parsedAgentCertificates.set(key, certificate);
  }
  return certificate;
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
 * banned, and the node's current (or just renewed) certificate. `method` names the call in the log.
 */
export async function admitAgent(call: Caller, o: AdmissionOptions, method: string): Promise<AttestedNode> {
  const { agentId, serial } = authenticateAgent(call, o.ca, o.trustDomain, o.clock);
  return admitNode(agentId, serial, o, method);
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
 * kept for the agent's next call: every sync call of every agent comes through here.
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
    const certificate = agentCertificate(peer.raw);
    const { id } = verifyX509Svid([certificate], new BundleSet([ca.bundle()]), {
      time: new Date(clock.now()),
    });
    if (id.trustDomain.name !== trustDomain || !id.path.startsWith('/agent/'))
      throw new Error(`${id.toString()} is not an agent of ${trustDomain}`);
    return { agentId: id.toString(), serial: certificate.serialNumber };
  } catch (cause) {
    throw new AttestationError(
      'ERR_AGENT_UNAUTHENTICATED',
      `the client certificate is not a valid agent SVID (${(cause as Error).message}); attest again`,
      { cause },
    );
  }
}

/** The node `agentId` names, if the certificate with `serial` may still speak for it. */
export async function admitNode(
  agentId: string,
  serial: string,
  o: AdmissionOptions,
  method: string,
): Promise<AttestedNode> {
  let node = await o.datastore.getNode(agentId);
  if (node === undefined)
    throw new AttestationError(
      'ERR_AGENT_NOT_ATTESTED',
      'this agent is not attested (evicted, or never was); attest again',
    );
  refuseBanned(agentId, node.banned);
  if (serial === node.serialNumber) return node;
  if (serial === node.newSerialNumber) {
    if (await o.datastore.promoteNodeSerial(agentId, serial, ACTOR)) {
      o.logger.info(
        { agent_id: agentId, method, serial_number: serial, superseded_serial_number: node.serialNumber },
        'agent uses its renewed SVID: the one it replaced is refused from now on',
      );
      const { newSerialNumber: _promoted, ...rest } = node;
      return { ...rest, serialNumber: serial };
    }
    // Another call promoted it, or the node attested again meanwhile: judge by what is stored now.
    node = await o.datastore.getNode(agentId);
    if (node === undefined)
      throw new AttestationError(
        'ERR_AGENT_NOT_ATTESTED',
        'this agent is not attested (evicted, or never was); attest again',
      );
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

export function refuseBanned(agentId: string, banned: boolean): void {
  if (banned)
    throw new AttestationError(
      'ERR_ATTEST_BANNED',
      `agent ${agentId} is banned; an operator must run "ironroot-server agent unban" first`,
    );
}
