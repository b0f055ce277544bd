import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { EV, parseEventLog } from '../../src/tpm/index.js';

const run = promisify(execFile);
/** Specs per tpm2_pcrextend call: it extends them left to right, so order is kept. */
const BATCH = 32;

/**
 * Puts a real boot into a fresh TPM: extends every event's digest (EV_NO_ACTION excluded) into its
 * PCR with tpm2_pcrextend, in log order, for each bank the log records and `banks` names. The TPM's
 * PCRs then equal the booted machine's, for PCRs whose reset value is 0 (a StartupLocality event
 * would need locality 3, which a test cannot have; the logs used here have none).
 */
export async function replayLogIntoTpm(
  tcti: string,
  log: Buffer,
  banks: readonly string[] = ['sha256'],
): Promise<void> {
  const parsed = parseEventLog(log);
  const specs: string[] = [];
  for (const event of parsed.events) {
    if (event.type === EV.NO_ACTION) {
      if (event.data.subarray(0, 16).toString('latin1') === 'StartupLocality\0')
        throw new Error('the log sets a start locality, which tpm2_pcrextend cannot reproduce');
      continue;
    }
    const digests = event.digests.filter((d) => banks.includes(d.bank));
    if (digests.length > 0)
      specs.push(`${event.pcr}:${digests.map((d) => `${d.bank}=${d.digest.toString('hex')}`).join(',')}`);
  }
  for (let i = 0; i < specs.length; i += BATCH)
    await run('tpm2_pcrextend', specs.slice(i, i + BATCH), { env: { ...process.env, TPM2TOOLS_TCTI: tcti } });
}
