#!/usr/bin/env node
// Runs every benchmark (scripts/bench-*.mjs) one after another, each in its own process so one's
// warm caches and heap do not colour the next. Benchmarks print figures and ratios; none asserts.
// Those that measure a figure of issue 13's table also print it as one `bench-figure:` line
// (scripts/lib/bench-figure.mjs); at the end they are gathered into one summary table.
//
// Usage: npm run bench [-- WORD...]  (only the benchmarks whose file name contains a WORD)
import { spawn } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { FIGURE_PREFIX } from './lib/bench-figure.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const only = process.argv.slice(2);
const benches = readdirSync(here)
  .filter((name) => /^bench-.+\.mjs$/.test(name))
  .filter((name) => only.length === 0 || only.some((word) => name.includes(word)))
  .sort();

/** Runs one benchmark, its output passed through; resolves to its exit status and its figures. */
function run(name) {
  const child = spawn(process.execPath, [join(here, name)], { stdio: ['ignore', 'pipe', 'inherit'] });
  const figures = [];
  createInterface({ input: child.stdout }).on('line', (line) => {
    if (line.startsWith(FIGURE_PREFIX)) figures.push(JSON.parse(line.slice(FIGURE_PREFIX.length)));
    else process.stdout.write(`${line}\n`);
  });
  return new Promise((resolve) => child.on('close', (status) => resolve({ status, figures })));
}

const summary = [];
let failed = 0;
for (const name of benches) {
  process.stdout.write(`\n=== ${name} ===\n`);
  const { status, figures } = await run(name);
  for (const figure of figures) summary.push({ bench: name, ...figure });
  if (status !== 0) {
    failed++;
    process.stderr.write(`${name} exited with status ${status}\n`);
  }
}

const number = (value, digits) => (Number.isFinite(value) ? value.toFixed(digits) : String(value));
const rows = [
  ['benchmark', 'figure', 'min / median / max', 'goal', 'met'],
  ...summary.map((f) => [
    f.bench.replace(/\.mjs$/, ''),
    f.figure,
    [f.min, f.median, f.max].map((v) => number(v, f.digits)).join(' / '),
    f.goal,
    f.met ? 'yes' : 'NO',
  ]),
];
const widths = rows[0].map((_, col) => Math.max(...rows.map((row) => row[col].length)));
process.stdout.write(
  `\n=== summary: issue 13's figures (${summary.filter((f) => f.met).length} of ${summary.length} met) ===\n`,
);
for (const row of rows)
  process.stdout.write(
    `${row
      .map((cell, col) => cell.padEnd(widths[col]))
      .join('  ')
      .trimEnd()}\n`,
  );
process.exitCode = failed === 0 ? 0 : 1;
