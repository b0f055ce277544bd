#!/usr/bin/env node
// Event log parse + replay throughput, on a real ~100-event log from test/fixtures/eventlogs. Run after a build
// (`npm run bench:eventlog` does both): it imports the compiled library from dist/, as the server will.
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const dist = join(root, 'dist', 'tpm', 'eventlog', 'index.js');
if (!existsSync(dist)) {
  process.stderr.write('bench-eventlog: dist/ is missing; run `npx tsc -p tsconfig.build.json` first\n');
  process.exit(1);
}
const { parseEventLog, replay, decodeAll, summarize } = await import(dist);

// mb_log.bin: a CentOS machine's log, crypto-agile, SHA-256 only, 102 events (keylime test data).
const logPath = join(root, 'test', 'fixtures', 'eventlogs', 'keylime', 'mb_log.bin');
const log = readFileSync(logPath);

function bench(name, fn) {
  for (let i = 0; i < 200; i++) fn(); // warm up the JIT
  const minMs = 2000;
  let ops = 0;
  const start = process.hrtime.bigint();
  let elapsed = 0;
  while (elapsed < minMs) {
    for (let i = 0; i < 100; i++) fn();
    ops += 100;
    elapsed = Number(process.hrtime.bigint() - start) / 1e6;
  }
  const perSecond = (ops / elapsed) * 1000;
  process.stdout.write(
    `${name.padEnd(34)} ${perSecond.toFixed(0).padStart(8)} ops/s  ${((elapsed / ops) * 1000).toFixed(1).padStart(7)} µs/op\n`,
  );
  return perSecond;
}

const events = parseEventLog(log).events.length;
process.stdout.write(`log: ${logPath} (${log.length} bytes, ${events} events)\n`);
const parseOnly = bench('parse', () => parseEventLog(log));
const parseReplay = bench('parse + replay', () => replay(parseEventLog(log)));
bench('parse + replay + decode + summary', () => {
  const parsed = parseEventLog(log);
  replay(parsed);
  summarize(parsed, decodeAll(parsed));
});
process.stdout.write(`replay share of parse+replay: ${(100 * (1 - parseReplay / parseOnly)).toFixed(0)}%\n`);
