#!/usr/bin/env node
// Verifier CPU per re-quote for its measured-boot part, with and without a firmware profile:
//   A (baseline): parse the event log, replay it and compare with the quoted PCRs (what the server
//     does with a log under `measured_boot: none`);
//   B: the same, then bind the event data in the quoted PCRs and evaluate a profile learnt from the log.
// The log is a real OVMF boot with Secure Boot on (keylime's, 99 events, test/fixtures/eventlogs),
// quoted PCRs 0-9 and 14. A and B alternate in every round; each figure is min/median/max over rounds.
// Quote signature verification is the other part of a re-quote: bench-tpm-verify measures it.
//
//   npx tsc -p tsconfig.build.json && node scripts/bench-requote.mjs
import { readFile } from 'node:fs/promises';

const tpm = await import('../dist/tpm/index.js').catch(() => {
  console.error('dist/ is missing: run `npx tsc -p tsconfig.build.json` first');
  process.exit(1);
});

const bytes = await readFile(
  new URL('../test/fixtures/eventlogs/keylime/binary_bios_measurements-secureboot', import.meta.url),
);
const QUOTED = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 14];
const replayed = tpm.replay(tpm.parseEventLog(bytes)).banks.get('sha256').pcrs;
const quoted = new Map([['sha256', new Map(QUOTED.map((p) => [p, replayed.get(p)]))]]);
const values = new Map(QUOTED.map((p) => [p, replayed.get(p).toString('hex')]));
const profile = tpm.learnProfile(tpm.selfBootFacts(tpm.parseEventLog(bytes)), { name: 'bench' });

function baseline() {
  const log = tpm.parseEventLog(bytes);
  tpm.compareWithPcrs(log, quoted);
  return log;
}

function withProfile() {
  const log = baseline();
  const facts = tpm.bootFacts(log, { bank: 'sha256', pcrs: QUOTED });
  const violations = tpm.evaluateProfile(profile, { facts, pcrValues: values });
  if (violations.length !== 0) throw new Error(`the golden log should fit: ${JSON.stringify(violations[0])}`);
}

/** CPU milliseconds per call over a batch of `n` calls. */
function cpuPerOp(fn, n) {
  const start = process.cpuUsage();
  for (let i = 0; i < n; i++) fn();
  const used = process.cpuUsage(start);
  return (used.user + used.system) / 1000 / n;
}

const ROUNDS = 15;
const BATCH = 200;
for (let i = 0; i < 50; i++) withProfile(); // warm-up
const a = [];
const b = [];
for (let round = 0; round < ROUNDS; round++) {
  a.push(cpuPerOp(baseline, BATCH));
  b.push(cpuPerOp(withProfile, BATCH));
}
const stats = (xs) => {
  const s = [...xs].sort((x, y) => x - y);
  return { min: s[0], median: s[Math.floor(s.length / 2)], max: s.at(-1) };
};
const fmt = ({ min, median, max }) =>
  `${median.toFixed(3)} ms (min ${min.toFixed(3)}, max ${max.toFixed(3)})`;
const ratios = stats(b.map((x, i) => x / a[i]));
console.log(
  `event log: ${tpm.parseEventLog(bytes).events.length} events, PCRs ${QUOTED.join(',')} quoted, ${ROUNDS} rounds of ${BATCH}, A/B alternating`,
);
console.log(`A  parse + replay + compare              : ${fmt(stats(a))} CPU per re-quote`);
console.log(
  `B  A + bind event data + evaluate profile : ${fmt(stats(b))} CPU per re-quote   (goal: <= 1 ms)`,
);
console.log(
  `ratio B / A per round: median ${ratios.median.toFixed(2)}x (min ${ratios.min.toFixed(2)}, max ${ratios.max.toFixed(2)})`,
);
