import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EV } from '../../src/tpm/index.js';
import { type Swtpm, startSwtpm } from '../helpers/swtpm.js';
import { agileLog } from '../tpm/eventlog/build-log.js';
import { healthy, startAttestServer, startTestAgent, type TestServer, until } from './harness.js';

const exec = promisify(execFile);

/** UEFI_VARIABLE_DATA for EFI_GLOBAL_VARIABLE's SecureBoot with one data byte. */
function secureBootVariable(enabled: boolean): Buffer {
  const guid = Buffer.from('8be4df6193ca11d2aa0d00e098032b8c', 'hex');
  guid.subarray(0, 4).reverse();
  guid.subarray(4, 6).reverse();
  guid.subarray(6, 8).reverse();
  const name = 'SecureBoot';
  const lengths = Buffer.alloc(16);
  lengths.writeBigUInt64LE(BigInt(name.length), 0);
  lengths.writeBigUInt64LE(1n, 8);
  return Buffer.concat([guid, lengths, Buffer.from(name, 'utf16le'), Buffer.from([enabled ? 1 : 0])]);
}

let swtpm: Swtpm;
let server: TestServer;
let logFile: string;
let pcr7: string;

beforeAll(async () => {
  swtpm = await startSwtpm();
  // What firmware would do: measure the SecureBoot variable into PCR 7 and log it.
  const data = secureBootVariable(true);
  const digest = createHash('sha256').update(data).digest();
  await exec('tpm2_pcrextend', [`7:sha256=${digest.toString('hex')}`], {
    env: { ...process.env, TPM2TOOLS_TCTI: swtpm.tcti },
  });
  pcr7 = createHash('sha256').update(Buffer.alloc(32)).update(digest).digest('hex');
  logFile = join(mkdtempSync(join(tmpdir(), 'ironroot-log-')), 'binary_bios_measurements');
  writeFileSync(logFile, agileLog(['sha256'], [{ pcr: 7, type: EV.EFI_VARIABLE_DRIVER_CONFIG, data }]));
  server = await startAttestServer({
    tpm_attestation: {
      measured_boot: 'none',
      ek_trust: 'any',
      require_event_log: true,
      pcr_values: { '7': [pcr7] },
    },
  });
});

afterAll(async () => {
  await server?.stop();
  await swtpm?.stop();
});

describe('an event log that replays to the quote', () => {
  it('is accepted under a PCR 7 policy and yields the Secure Boot selector', async () => {
    const agent = await startTestAgent(server, { tcti: swtpm.tcti, event_log_path: logFile });
    try {
      const status = await until('the agent to attest', () => healthy(agent));
      const values = ((await server.server.datastore.getNode(status.spiffe_id))?.selectors ?? []).map(
        (s) => `${s.type}:${s.value}`,
      );
      expect(values).toContain('tpm:secureboot:enabled');
      expect(values).toContain(`tpm:pcr:sha256:7:${pcr7}`);
    } finally {
      await agent.stop();
    }
  });
});
