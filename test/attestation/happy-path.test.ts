import { readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ekPublicKeyHash, Tpm, withEk } from '../../src/tpm/index.js';
import { type Swtpm, startSwtpm } from '../helpers/swtpm.js';
import {
  ekCaDir,
  healthy,
  startAttestServer,
  startTestAgent,
  TD,
  type TestServer,
  until,
} from './harness.js';

let swtpm: Swtpm;
let server: TestServer;

beforeAll(async () => {
  swtpm = await startSwtpm();
  server = await startAttestServer({ tpm_attestation: { measured_boot: 'none', ek_ca_dir: ekCaDir(swtpm) } });
});

afterAll(async () => {
  await server?.stop();
  await swtpm?.stop();
});

async function ekHash(kind: 'rsa2048' | 'ecc-p384-high'): Promise<string> {
  const tpm = await Tpm.open(swtpm.tcti);
  try {
    return await withEk(tpm, kind, async (ek) => ekPublicKeyHash(ek.public.area));
  } finally {
    await tpm.close();
  }
}

describe.each([
  ['auto (the RSA EK)', 'auto', 'rsa2048'],
  ['the P-384 EK', 'ecc-p384-high', 'ecc-p384-high'],
] as const)('TPM attestation with %s', (_name, ek, kind) => {
  it('issues the agent SVID named by the EK hash and records the node with its selectors', async () => {
    const agent = await startTestAgent(server, { tcti: swtpm.tcti, ek });
    try {
      const status = await until('the agent to attest', () => healthy(agent));
      const hash = await ekHash(kind);
      expect(status.spiffe_id).toBe(`spiffe://${TD}/agent/tpm/${hash}`);

      const node = await server.server.datastore.getNode(status.spiffe_id);
      expect(node?.attestationType).toBe('tpm');
      expect(node?.tpm?.ekHash).toBe(hash);
      expect(node?.tpm?.ekIssuer).toContain('swtpm-localca');
      expect(node?.attestationCount).toBe(1);
      const values = (node?.selectors ?? []).map((s) => `${s.type}:${s.value}`);
      expect(values).toContain(`tpm:ek-hash:${hash}`);
      expect(values).toContain('tpm:model:swtpm');
      expect(values.some((v) => v.startsWith('tpm:manufacturer:id:'))).toBe(true);
      expect(values.some((v) => v.startsWith('tpm:firmware-version:'))).toBe(true);
      for (let pcr = 0; pcr < 8; pcr++)
        expect(values.some((v) => v.startsWith(`tpm:pcr:sha256:${pcr}:`))).toBe(true);
      const quote = JSON.parse(Buffer.from(node?.tpm?.lastQuote ?? new Uint8Array()).toString()) as {
        pcrs: { sha256: Record<string, string> };
        reset_count: number;
      };
      expect(Object.keys(quote.pcrs.sha256)).toHaveLength(8);

      // The SVID and key persist with private modes, in a private directory.
      expect(statSync(agent.dataDir).mode & 0o777).toBe(0o700);
      for (const file of ['agent-key.pem', 'agent-svid.pem', 'ak.json'])
        expect(statSync(join(agent.dataDir, file)).mode & 0o777).toBe(0o600);
      expect(readFileSync(join(agent.dataDir, 'agent-svid.pem'), 'utf8')).toContain('BEGIN CERTIFICATE');

      const decision = server.logs
        .decisions()
        .find((d) => d.agent_id === status.spiffe_id && d.result === 'ok' && d.operation === 'attest');
      expect(decision).toMatchObject({ attestation_method: 'tpm', reason: '' });
      expect(typeof decision?.duration_ms).toBe('number');
    } finally {
      await agent.stop();
    }
  });
});

describe('join token attestation', () => {
  it('names the agent by the token id and refuses the token the second time', async () => {
    const token = await server.registration.createJoinToken({ ttl: 600, spiffe_id: '' }, 'test');
    const first = await startTestAgent(server, { attestation: 'join_token', join_token: token.value });
    try {
      const status = await until('the join-token agent to attest', () => healthy(first));
      expect(status.spiffe_id).toMatch(new RegExp(`^spiffe://${TD}/agent/join_token/[0-9a-f]{12}$`));
      expect(server.logs.text()).not.toContain(token.value);
    } finally {
      await first.stop();
    }
    const second = await startTestAgent(server, { attestation: 'join_token', join_token: token.value });
    try {
      const status = await until('the reused token to be refused', () => {
        const s = second.agent.status();
        return s.last_error ? s : undefined;
      });
      expect(status.state).toBe('unavailable');
      expect(status.last_error?.code).toBe('ERR_ATTEST_JOIN_TOKEN_INVALID');
    } finally {
      await second.stop();
    }
  });
});

describe('node aliases', () => {
  it('match an attested node by the selectors its attestation produced, all of them', async () => {
    const agent = await startTestAgent(server, { tcti: swtpm.tcti });
    try {
      const status = await until('the agent to attest', () => healthy(agent));
      const node = await server.server.datastore.getNode(status.spiffe_id);
      const selectors = node?.selectors ?? [];
      const entry = (spiffeId: string, values: string[]) =>
        server.server.datastore.createEntry(
          {
            spiffeId,
            parentId: `spiffe://${TD}/ironroot/server`,
            selectors: values.map((value) => ({ type: 'tpm', value })),
            x509SvidTtl: 0,
            jwtSvidTtl: 0,
            dnsNames: [],
            admin: false,
            downstream: false,
            federatesWith: [],
            hint: '',
            expiresAt: 0,
          },
          'test',
        );
      const pcr0 = selectors.find((s) => s.value.startsWith('pcr:sha256:0:'))?.value ?? '';
      await entry(`spiffe://${TD}/nodes/swtpm`, ['model:swtpm']);
      await entry(`spiffe://${TD}/nodes/swtpm-pcr0`, ['model:swtpm', pcr0]);
      await entry(`spiffe://${TD}/nodes/other-model`, ['model:NPCT75x']);
      await entry(`spiffe://${TD}/nodes/swtpm-other-pcr0`, [
        'model:swtpm',
        `pcr:sha256:0:${'ab'.repeat(32)}`,
      ]);

      const aliases = await server.registration.nodeAliases({ spiffeId: status.spiffe_id, selectors });
      expect(aliases.map((a) => a.spiffeId).sort()).toEqual([
        `spiffe://${TD}/nodes/swtpm`,
        `spiffe://${TD}/nodes/swtpm-pcr0`,
      ]);
    } finally {
      await agent.stop();
    }
  });
});
