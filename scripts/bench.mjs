#!/usr/bin/env node
// Runs every benchmark (scripts/bench-*.mjs) one after another, each in its own process so one's
// warm caches and heap do not colour the next. Benchmarks print figures and ratios; none asserts.
import { spawnSync } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const only = process.argv.slice(2);
const benches = readdirSync(here)
  .filter((name) => /^bench-.+\.mjs$/.test(name))
  .filter((name) => only.length === 0 || only.some((word) => name.includes(word)))
  .sort();

let failed = 0;
for (const name of benches) {
  process.stdout.write(`\n=== ${name} ===\n`);
  const result = spawnSync(process.execPath, [join(here, name)], { stdio: 'inherit' });
  if (result.status !== 0) {
    failed++;
    process.stderr.write(`${name} exited with status ${result.status}\n`);
  }
}
process.exitCode = failed === 0 ? 0 : 1;
