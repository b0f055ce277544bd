import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fixturePath } from '../../helpers/fixtures.js';
import { replayIntoTpm } from '../../helpers/replay-into-tpm.js';
import { type Swtpm, startSwtpm } from '../../helpers/swtpm.js';
import { tpm2 } from '../../helpers/tpm2-tools.js';

const OVMF = (name: string): string => fixturePath('eventlogs', 'ovmf', name);

async function pcrread(tpm: Swtpm): Promise<Map<number, string>> {
  const out = await tpm2('tpm2_pcrread', ['sha256'], tpm.tcti);
  return new Map(
    [...out.matchAll(/^\s+(\d+)\s*: 0x([0-9A-F]+)$/gm)].map((m) => [
      Number(m[1]),
      (m[2] ?? '').toLowerCase(),
    ]),
  );
}

function fixturePcrs(name: string): Record<string, string> {
  const json = JSON.parse(readFileSync(OVMF(`${name}.pcrs.json`), 'utf8')) as Record<
    string,
    Record<string, string>
  >;
  const sha256 = json.sha256;
  if (sha256 === undefined) throw new Error(`${name}.pcrs.json has no sha256 bank`);
  return sha256;
}

describe('replayIntoTpm: a real OVMF boot log extended into a fresh swtpm', () => {
  let tpm: Swtpm;
  let pristine: Map<number, string>;
  let extended: number[];

  beforeAll(async () => {
    tpm = await startSwtpm();
    pristine = await pcrread(tpm);
    extended = await replayIntoTpm(tpm, readFileSync(OVMF('debian-secureboot.bin')));
  });
  afterAll(() => tpm?.stop());

  it('extends the PCRs the log extends, and tpm2_pcrread then equals the booted guest’s PCRs for each', async () => {
    expect(extended).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 14]);
    const after = await pcrread(tpm);
    const booted = fixturePcrs('debian-secureboot');
    for (const pcr of extended) {
      expect(after.get(pcr), `PCR ${pcr}`).toBe(booted[String(pcr)]);
      expect(after.get(pcr), `PCR ${pcr} was extended`).not.toBe(pristine.get(pcr));
    }
  });

  it('leaves every other PCR at its reset value', async () => {
    const after = await pcrread(tpm);
    expect(after.size).toBe(24);
    for (const [pcr, value] of after) {
      if (!extended.includes(pcr)) expect(value, `PCR ${pcr}`).toBe(pristine.get(pcr));
    }
  });
});

describe('replayIntoTpm refuses what it cannot reproduce', () => {
  let tpm: Swtpm;
  beforeAll(async () => {
    tpm = await startSwtpm();
  });
  afterAll(() => tpm?.stop());

  it('a log with StartupLocality 3 (keylime’s laptop log): PCR 0 would not start where the log says', async () => {
    const log = readFileSync(fixturePath('eventlogs', 'keylime', 'binary_bios_measurements'));
    await expect(replayIntoTpm(tpm, log)).rejects.toThrow(
      /sets StartupLocality 3: PCR 0 cannot be reproduced/,
    );
  });

  it('a SHA-1-only log: it has no sha256 digests to extend', async () => {
    const log = readFileSync(fixturePath('eventlogs', 'go-attestation', 'ebs_event_missing_eventlog'));
    await expect(replayIntoTpm(tpm, log)).rejects.toThrow(/records sha1 but no sha256 digests/);
  });
});
