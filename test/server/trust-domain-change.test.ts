import { createHash } from 'node:crypto';
import { mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import BetterSqlite3 from 'better-sqlite3';
import { afterAll, describe, expect, it } from 'vitest';
import { parse, stringify } from 'yaml';
import { SQLITE_FILE } from '../../src/server/datastore/index.js';
import { checkDataDirTrustDomain } from '../../src/server/datastore/trust-domain.js';
import { cli, startTestServer, type TestServer } from '../helpers/server.js';

/** Every row of every table, and the bytes of every file in the data dir. */
function snapshot(dataDir: string): { files: Record<string, string>; rows: Record<string, unknown[]> } {
  const files: Record<string, string> = {};
  for (const name of readdirSync(dataDir).sort())
    files[name] = createHash('sha256')
      .update(readFileSync(join(dataDir, name)))
      .digest('hex');
  const db = new BetterSqlite3(join(dataDir, SQLITE_FILE), { readonly: true });
  try {
    const tables = db.prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name").all() as {
      name: string;
    }[];
    const rows: Record<string, unknown[]> = {};
    for (const { name } of tables) rows[name] = db.prepare(`SELECT * FROM "${name}"`).all();
    return { files, rows };
  } finally {
    db.close();
  }
}

describe('a data dir keeps the trust domain it was made for', () => {
  let server: TestServer | undefined;
  afterAll(async () => {
    await server?.stop();
  });

  it('refuses run --trust-domain example.com, config trust_domain example.com and validate on an example.org data dir, naming both domains and writing nothing', async () => {
    const keys = mkdtempSync(join(tmpdir(), 'ironroot-keys-'));
    const running = await startTestServer({ key_manager: `disk:${keys}` });
    server = running;
    const created = await cli([
      'entry',
      'create',
      '--admin-socket',
      running.socket,
      '--spiffe-id',
      'spiffe://example.org/web',
      '--parent-id',
      'spiffe://example.org/agent/a',
      '--selector',
      'unix:uid:1',
    ]);
    expect(created.code).toBe(0);
    await running.stop();
    // The server's admin socket is gone with it; only the data dir is compared.
    const before = snapshot(running.dataDir);
    expect(before.rows.bundles).toHaveLength(1);

    const message = `data_dir ${running.dataDir} belongs to trust domain example.org (its CA and bundle were made for it), not example.com: a server cannot change its trust domain; start with trust_domain example.org, or give example.com a new, empty data_dir`;
    const byFlag = await cli(['run', '--config', running.configFile, '--trust-domain', 'example.com']);
    expect(byFlag.code).toBe(1);
    expect(byFlag.stderr).toBe(`Error (ERR_TRUST_DOMAIN_MISMATCH): ${message}\n`);

    const otherConfig = join(running.dir, 'example-com.yaml');
    const config = parse(readFileSync(running.configFile, 'utf8')) as Record<string, unknown>;
    writeFileSync(otherConfig, stringify({ ...config, trust_domain: 'example.com' }));
    const byConfig = await cli(['run', '--config', otherConfig]);
    expect(byConfig.code).toBe(1);
    expect(byConfig.stderr).toBe(`Error (ERR_TRUST_DOMAIN_MISMATCH): ${message}\n`);

    const validated = await cli(['validate', '--config', otherConfig]);
    expect(validated).toEqual({
      code: 1,
      stdout: '',
      stderr: `Error (ERR_TRUST_DOMAIN_MISMATCH): ${message}\n`,
    });
    expect(() => checkDataDirTrustDomain(running.dataDir, 'example.com')).toThrow(
      expect.objectContaining({ code: 'ERR_TRUST_DOMAIN_MISMATCH', message }),
    );

    expect(snapshot(running.dataDir)).toEqual(before);
    // The data dir is untouched: its own trust domain starts on it as before.
    await running.restart();
    const shown = await cli(['entry', 'count', '--admin-socket', running.socket, '--output', 'json']);
    expect(JSON.parse(shown.stdout)).toEqual({ count: 1 });
    await running.stop();
    expect((await cli(['validate', '--config', running.configFile])).code).toBe(0);
  });
});
