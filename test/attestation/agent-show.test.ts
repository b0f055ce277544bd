import { createHash, X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { AgentMessage } from '../../src/server/admin/messages.js';
import { ekPublicKeyHash, pcrSelection, readPcrs, TPM_ALG, Tpm, withEk } from '../../src/tpm/index.js';
import { cli } from '../helpers/server.js';
import { type Swtpm, startSwtpm } from '../helpers/swtpm.js';
import {
  ekCaDir,
  healthy,
  startAttestServer,
  startTestAgent,
  type TestAgent,
  type TestServer,
  until,
} from './harness.js';

let swtpm: Swtpm;
let server: TestServer;
let agent: TestAgent;
let agentId: string;

beforeAll(async () => {
  swtpm = await startSwtpm();
  server = await startAttestServer({ tpm_attestation: { measured_boot: 'none', ek_ca_dir: ekCaDir(swtpm) } });
  agent = await startTestAgent(server, { tcti: swtpm.tcti });
  agentId = (await until('the agent to attest', () => healthy(agent))).spiffe_id;
  // The TPM is read below on its own connection; the agent is done with it once attested.
  await agent.stop();
});

afterAll(async () => {
  await agent?.stop();
  await server?.stop();
  await swtpm?.stop();
});

/** What the TPM itself says: the RSA EK's hash and its sha256 PCRs 0-7. */
async function fromTpm(): Promise<{ ekHash: string; pcrs: Map<number, string> }> {
  const tpm = await Tpm.open(swtpm.tcti);
  try {
    const ekHash = await withEk(tpm, 'rsa2048', async (ek) => ekPublicKeyHash(ek.public.area));
    const [bank] = await readPcrs(tpm, [pcrSelection(TPM_ALG.SHA256, [0, 1, 2, 3, 4, 5, 6, 7])]);
    const pcrs = new Map([...(bank?.values ?? [])].map(([i, v]) => [i, Buffer.from(v).toString('hex')]));
    return { ekHash, pcrs };
  } finally {
    await tpm.close();
  }
}

const show = (...extra: string[]) =>
  cli(['agent', 'show', '--admin-socket', server.adminSocket, '--spiffe-id', agentId, ...extra]);

describe('agent show on a TPM-attested node', () => {
  it('--output json carries everything the node record holds', async () => {
    const result = await show('--output', 'json');
    expect(result.stderr).toBe('');
    expect(result.code).toBe(0);
    const shown = JSON.parse(result.stdout) as AgentMessage;
    const tpm = await fromTpm();
    const node = await server.server.datastore.getNode(agentId);
    const svid = new X509Certificate(readFileSync(join(agent.dataDir, 'agent-svid.pem')));

    expect(shown.spiffe_id).toBe(agentId);
    expect(shown.attestation_type).toBe('tpm');
    expect(shown.ek_hash).toBe(tpm.ekHash);
    expect(shown.ek_issuer).toContain('swtpm-localca');
    expect(shown.ak_public_sha256).toBe(
      createHash('sha256')
        .update(node?.tpm?.akPublic ?? new Uint8Array())
        .digest('hex'),
    );
    // The agent's attestor creates an RSA 2048 AK.
    expect(shown.ak_algorithm).toBe('rsa2048');
    expect(shown.attestation_count).toBe(1);
    expect(shown.banned).toBe(false);
    expect(shown.x509_svid_serial_number).toBe(svid.serialNumber);
    expect(shown.x509_svid_expires_at).toBe(Math.floor(Date.parse(svid.validTo) / 1000));
    expect(shown.selectors).toContainEqual({ type: 'tpm', value: `ek-hash:${tpm.ekHash}` });

    const quote = shown.last_quote;
    expect(quote).not.toBeNull();
    expect(quote?.quoted_at).toBe(node?.createdAt);
    expect(quote?.reset_count).toBe(node?.tpm?.resetCount);
    expect(quote?.restart_count).toBeGreaterThanOrEqual(0);
    expect(quote?.firmware_version).toMatch(/^[0-9a-f]{16}$/);
    const sha256 = new Map(
      (quote?.pcrs ?? []).filter((p) => p.bank === 'sha256').map((p) => [p.index, p.value]),
    );
    for (const [index, value] of tpm.pcrs) expect(sha256.get(index)).toBe(value);
  });

  it('prints the same in text, and shows a ban', async () => {
    await cli(['agent', 'ban', '--admin-socket', server.adminSocket, '--spiffe-id', agentId]);
    const result = await show();
    expect(result.code).toBe(0);
    const shown = JSON.parse((await show('--output', 'json')).stdout) as AgentMessage;
    const quote = shown.last_quote;
    const lines = result.stdout.split('\n');
    expect(lines).toContain(`SPIFFE ID         : ${agentId}`);
    expect(lines).toContain('Banned            : true');
    expect(lines).toContain('Attestations      : 1');
    expect(lines).toContain(`EK hash           : ${shown.ek_hash}`);
    expect(lines).toContain(`EK issuer         : ${shown.ek_issuer}`);
    expect(lines).toContain(
      `AK                : ${shown.ak_algorithm}, public area SHA-256 ${shown.ak_public_sha256}`,
    );
    expect(lines).toContain(
      `Last quote        : ${new Date((quote?.quoted_at ?? 0) * 1000).toISOString()}, reset count ${quote?.reset_count}, restart count ${quote?.restart_count}, firmware ${quote?.firmware_version}`,
    );
    const pcr0 = quote?.pcrs.find((p) => p.bank === 'sha256' && p.index === 0);
    expect(lines).toContain(`PCR sha256:0      : ${pcr0?.value}`);
    expect(lines).toContain(`Serial number     : ${shown.x509_svid_serial_number}`);
  });
});
