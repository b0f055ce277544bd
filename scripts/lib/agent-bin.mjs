// The installed agent's entry point, the node flags and the priority it runs with: benchmarks that spawn
// `node <flags> bin/ironroot-agent.js` must pass the flags of its `#!/usr/bin/env -S node …` line
// themselves (node ignores a shebang it is handed as a script), or they measure another agent; the
// same for the `Nice=` of its systemd unit.
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const agentBin = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'bin', 'ironroot-agent.js');

/** The node flags in the bin script's first line, e.g. ['--max-semi-space-size=2', '--no-opt']. */
export const agentBinFlags = (readFileSync(agentBin, 'utf8').split('\n')[0] ?? '').split(/\s+/).slice(3);

const agentUnit = join(
  dirname(fileURLToPath(import.meta.url)),
  '..',
  '..',
  'packaging',
  'systemd',
  'ironroot-agent.service',
);

/** The `Nice=` of the agent's systemd unit (0 when it sets none). */
export const agentUnitNice = Number(/^Nice=(-?\d+)$/m.exec(readFileSync(agentUnit, 'utf8'))?.[1] ?? 0);
