import { execFile } from 'node:child_process';
import { sign, verify } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { newKeyPair } from '../../src/spiffe/new-key-pair.js';
import { assertBuilt, repoRoot } from '../helpers/dist.js';

const run = promisify(execFile);

/** Every .ts file under `dir`, recursively. */
function sources(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? sources(join(dir, e.name)) : /\.(ts|mjs)$/.test(e.name) ? [join(dir, e.name)] : [],
  );
}

describe('newKeyPair', () => {
  it('makes EC and RSA key pairs as asked, whose halves belong together', () => {
    for (const [type, options, detail] of [
      ['ec', { namedCurve: 'P-256' }, { namedCurve: 'prime256v1' }],
      ['ec', { namedCurve: 'P-384' }, { namedCurve: 'secp384r1' }],
      ['rsa', { modulusLength: 2048 }, { modulusLength: 2048 }],
    ] as const) {
      const { privateKey, publicKey } =
        type === 'ec'
          ? newKeyPair(type, options as { namedCurve: string })
          : newKeyPair(type, options as { modulusLength: number });
      expect(privateKey.type).toBe('private');
      expect(publicKey.type).toBe('public');
      expect(privateKey.asymmetricKeyDetails).toMatchObject(detail);
      const data = Buffer.from(`signed by a new ${type} key`);
      expect(verify('sha256', data, publicKey, sign('sha256', data, privateKey))).toBe(true);
    }
    const a = newKeyPair('ec', { namedCurve: 'P-256' });
    const b = newKeyPair('ec', { namedCurve: 'P-256' });
    expect(a.publicKey.equals(b.publicKey)).toBe(false);
  });

  it('does not hang when a collection starts while a new key is in use (generateKeyPairSync does, on Node 20)', async () => {
    assertBuilt();
    // A small young generation makes collections frequent; each key is used in native calls that
    // hold its lock while they allocate (20 JWK exports). With generateKeyPairSync's own
    // KeyObjects this loop hangs before its 500th key.
    const loop = `
      import { newKeyPair } from ${JSON.stringify(join(repoRoot, 'dist/spiffe/index.js'))};
      let kept = [];
      for (let i = 0; i < 2000; i++) {
        const { privateKey } = newKeyPair('ec', { namedCurve: 'P-256' });
        for (let j = 0; j < 20; j++) kept.push(privateKey.export({ format: 'jwk' }).d);
        if (kept.length > 2000) kept = [];
      }
      console.log('done');
    `;
    const { stdout } = await run(
      process.execPath,
      ['--max-semi-space-size=1', '--input-type=module', '-e', loop],
      { timeout: 50_000, killSignal: 'SIGKILL' },
    ).catch((error: { killed?: boolean; stderr?: string }) => {
      throw new Error(
        error.killed ? 'the key loop hung (killed after 50 s)' : `the key loop failed: ${error.stderr}`,
      );
    });
    expect(stdout.trim()).toBe('done');
  }, 60_000);

  it('is the only place that calls generateKeyPairSync, in src/, test/ and the benchmarks (scripts/)', () => {
    const self = fileURLToPath(import.meta.url);
    const callers = [
      ...sources(join(repoRoot, 'src')),
      ...sources(join(repoRoot, 'test')),
      ...sources(join(repoRoot, 'scripts')),
    ]
      .filter((file) => file !== self && readFileSync(file, 'utf8').includes('generateKeyPairSync('))
      .map((file) => file.slice(repoRoot.length));
    expect(callers).toEqual(['src/spiffe/new-key-pair.ts']);
  });
});
