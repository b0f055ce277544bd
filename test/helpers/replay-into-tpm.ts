import { decodeEvent, EV, parseEventLog } from '../../src/tpm/eventlog/index.js';
import type { Swtpm } from './swtpm.js';
import { tpm2 } from './tpm2-tools.js';

/**
 * Puts a real boot's measurements into a fresh swtpm: extends each event's sha256 digest into its PCR,
 * in log order, with tpm2_pcrextend, so the swtpm's sha256 PCRs then equal the booted machine's for
 * every PCR the log extends. An agent on that swtpm can then attest with the real log. EV_NO_ACTION
 * events are skipped: firmware logs them without extending anything.
 *
 * Returns the PCRs it extended, in ascending order.
 */
export async function replayIntoTpm(tpm: Pick<Swtpm, 'tcti'>, eventLog: Buffer): Promise<number[]> {
  const log = parseEventLog(eventLog);
  if (!log.banks.includes('sha256')) {
    throw new Error(`the event log records ${log.banks.join(', ')} but no sha256 digests to extend`);
  }
  const specs: string[] = [];
  for (const event of log.events) {
    if (event.type === EV.NO_ACTION) {
      // A non-zero StartupLocality starts PCR 0 at a value a locality-0 extend cannot reproduce.
      const decoded = decodeEvent(event, log.specId);
      if (decoded.kind === 'startup-locality' && decoded.locality !== 0) {
        throw new Error(
          `event ${event.index} sets StartupLocality ${decoded.locality}: PCR 0 cannot be reproduced by extending a reset TPM`,
        );
      }
      continue;
    }
    const digest = event.digests.find((d) => d.bank === 'sha256');
    if (digest === undefined) throw new Error(`event ${event.index} (PCR ${event.pcr}) has no sha256 digest`);
    specs.push(`${event.pcr}:sha256=${digest.digest.toString('hex')}`);
  }
  // One invocation extends the specs in the order given, so events keep their log order.
  if (specs.length > 0) await tpm2('tpm2_pcrextend', specs, tpm.tcti);
  return [...new Set(log.events.filter((e) => e.type !== EV.NO_ACTION).map((e) => e.pcr))].sort(
    (a, b) => a - b,
  );
}
