import { createHash } from 'node:crypto';
import { join } from 'node:path';
import BetterSqlite3 from 'better-sqlite3';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { SQLITE_FILE } from '../../src/server/datastore/index.js';
import { ekPublicKeyHash, Tpm, withEk } from '../../src/tpm/index.js';
import { type Swtpm, startSwtpm } from '../helpers/swtpm.js';
import { evilAttest } from './evil-agent.js';
import { ekCaDir, startAttestServer, TD, type TestServer } from './harness.js';

let swtpm: Swtpm;
let caDir: string;
let agentId: string;
const servers: TestServer[] = [];

beforeAll(async () => {
  swtpm = await startSwtpm();
  caDir = ekCaDir(swtpm);
  const tpm = await Tpm.open(swtpm.tcti);
  try {
    agentId = `spiffe://${TD}/agent/tpm/${await withEk(tpm, 'rsa2048', async (ek) => ekPublicKeyHash(ek.public.area))}`;
  } finally {
    await tpm.close();
  }
});

afterEach(async () => {
  for (const server of servers.splice(0)) await server.stop();
});

afterAll(async () => {
  await swtpm?.stop();
});

async function server(): Promise<TestServer> {
  const started = await startAttestServer({ tpm_attestation: { measured_boot: 'none', ek_ca_dir: caDir } });
  servers.push(started);
  return started;
}

function nonceRows(s: TestServer): Record<string, unknown>[] {
  const db = new BetterSqlite3(join(s.dataDir, SQLITE_FILE), { readonly: true });
  try {
    return db.prepare('SELECT * FROM attestation_nonces').all() as Record<string, unknown>[];
  } finally {
    db.close();
  }
}

describe('attestation nonces live in the datastore', () => {
  it('a quote replayed after a server restart is refused as a replay, with the code of a replay without restart', async () => {
    const s = await server();
    const first = await evilAttest(s, swtpm.tcti);
    expect(first.result?.spiffe_id).toBe(agentId);
    const earlier = first.answer;
    if (earlier === undefined || first.evidence === undefined || first.ak === undefined)
      throw new Error('the first handshake sent no answer');
    await s.restart();
    const replay = await evilAttest(
      s,
      swtpm.tcti,
      { answer: (honest) => ({ ...earlier, activated_secret: honest.activated_secret }) },
      { reuse: { evidence: first.evidence, ak: first.ak } },
    );
    expect(replay.error?.code).toBe('ERR_ATTEST_NONCE_REPLAYED');
    expect(s.logs.decisions().at(-1)).toMatchObject({
      result: 'refused',
      reason: 'ERR_ATTEST_NONCE_REPLAYED',
      agent_id: agentId,
    });
    expect((await s.server.datastore.getNode(agentId))?.attestationCount).toBe(1);
  });

  it('keeps the credential-activation secret only as its SHA-256, and nonces only as theirs', async () => {
    const s = await server();
    const outcome = await evilAttest(s, swtpm.tcti);
    const secret = outcome.answer?.activated_secret;
    if (outcome.result === undefined || secret === undefined) throw new Error('attestation failed');
    const rows = nonceRows(s);
    expect(rows).toHaveLength(1);
    const [row] = rows;
    expect(row?.secret_hash).toBe(createHash('sha256').update(secret).digest('hex'));
    expect(row?.consumed_at_ms).not.toBeNull();
    const stored = Buffer.from(JSON.stringify(rows));
    expect(stored.includes(Buffer.from(secret).toString('hex'))).toBe(false);
    expect(stored.includes(Buffer.from(secret).toString('base64'))).toBe(false);
  });
});
