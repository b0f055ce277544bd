#!/usr/bin/env -S node --max-semi-space-size=2 --no-opt
// --max-semi-space-size=2 (MiB): V8's young generation otherwise grows to 16 MiB per semi-space and
// stays committed, 15–25 MiB of the idle agent's RSS; capped, an agent measured 20–30 MiB smaller
// with no measurable CPU cost. --no-opt: no optimising compiler (TurboFan); what start-up optimised,
// its compiler's memory and the pages of node it runs from stayed resident, 6–7 MiB, while the
// agent's hot work is OpenSSL's and the baseline compiler's code was as fast here (docs/performance.md,
// "Agent memory"). The systemd unit runs this file.
import { main } from '../dist/agent/cli/main.js';
import { formatCliError } from '../dist/host/index.js';

// main reports a failed command itself (Error (ERR_CODE): …); this catches only what escapes that.
main(process.argv).catch((error) => {
  process.stderr.write(formatCliError(error, 'text'));
  process.exitCode = 1;
});
