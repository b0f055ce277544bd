import { execFile } from 'node:child_process';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { builtBin } from '../helpers/dist.js';
import { fixturePath } from '../helpers/fixtures.js';
import { type Swtpm, startSwtpm } from '../helpers/swtpm.js';
import { tpm2 } from '../helpers/tpm2-tools.js';

const run = promisify(execFile);
const bin = builtBin('ironroot-agent');

let swtpm: Swtpm;

async function agent(args: string[], env: NodeJS.ProcessEnv = process.env): Promise<string> {
  const { stdout } = await run(process.execPath, [bin, ...args], { env, encoding: 'utf8' });
  return stdout;
}

beforeAll(async () => {
  swtpm = await startSwtpm();
});

afterAll(() => swtpm?.stop());

describe('ironroot-agent tpm', () => {
  it('lists info, pcrs, quote and eventlog in its help', async () => {
    const out = await agent(['tpm', '--help']);
    for (const sub of ['info', 'pcrs', 'quote', 'eventlog'])
      expect(out).toMatch(new RegExp(`^\\s+${sub}\\b`, 'm'));
  });

  it('shows vendor, banks, EKs and certificates with info', async () => {
    const out = await agent(['tpm', 'info', '--tcti', swtpm.tcti]);
    expect(out).toMatch(/^TPM: +IBM "SW {3}TPM"/m);
    expect(out).toContain('sha256 (24 PCRs)');
    expect(out).toContain('rsa2048 at 0x81010001');
    expect(out).toContain('ecc-p384-high at 0x81010016');
    expect(out).toMatch(/0x1c00002 \(rsa2048\): subject "CN=unknown", issuer "CN=swtpm-localca", serial/);
    expect(out).toMatch(/0x1c00016 \(ecc-p384-high\): .*issuer "CN=swtpm-localca"/);
  });

  it('honours TPM2TOOLS_TCTI when --tcti is not given, and prints JSON', async () => {
    const out = await agent(['tpm', 'info', '--output', 'json'], {
      ...process.env,
      TPM2TOOLS_TCTI: swtpm.tcti,
    });
    const parsed = JSON.parse(out) as { ekCertificates: { index: string }[]; tpm: { manufacturer: string } };
    expect(parsed.tpm.manufacturer).toBe('IBM');
    expect(parsed.ekCertificates.map((c) => c.index)).toEqual(['0x1c00002', '0x1c00016']);
  });

  it('prints the same PCR values as tpm2_pcrread', async () => {
    await tpm2('tpm2_pcrextend', [`7:sha256=${'ab'.repeat(32)}`], swtpm.tcti);
    const out = JSON.parse(await agent(['tpm', 'pcrs', '--tcti', swtpm.tcti, '--output', 'json'])) as {
      bank: string;
      values: Record<string, string>;
    }[];
    const oracle = await tpm2('tpm2_pcrread', ['sha256:7,8'], swtpm.tcti);
    expect(out[0]?.bank).toBe('sha256');
    expect(Object.keys(out[0]?.values ?? {})).toHaveLength(24);
    expect(oracle.toLowerCase()).toContain(`7 : 0x${out[0]?.values['7']}`);
    expect(oracle.toLowerCase()).toContain(`8 : 0x${out[0]?.values['8']}`);
    expect(out[0]?.values['7']).not.toBe('00'.repeat(32));
  });

  it('prints a quote that tpm2_checkquote verifies with the printed AK key and PCR values', async () => {
    const nonce = '5eed00112233';
    const out = JSON.parse(
      await agent([
        'tpm',
        'quote',
        '--tcti',
        swtpm.tcti,
        '--pcrs',
        'sha256:0,7',
        '--nonce',
        nonce,
        '--output',
        'json',
      ]),
    ) as { attest: string; signature: string; akPem: string; pcrs: { values: Record<string, string> }[] };
    const f = (n: string) => join(swtpm.dir, n);
    await writeFile(f('cli.msg'), Buffer.from(out.attest, 'hex'));
    await writeFile(f('cli.sig'), Buffer.from(out.signature, 'hex'));
    await writeFile(f('cli.pem'), out.akPem);
    await writeFile(f('cli.pcrs'), Buffer.from(Object.values(out.pcrs[0]?.values ?? {}).join(''), 'hex'));
    const args = ['-u', f('cli.pem'), '-m', f('cli.msg'), '-s', f('cli.sig'), '-f', f('cli.pcrs')];
    await tpm2('tpm2_checkquote', [...args, '-l', 'sha256:0,7', '-g', 'sha256', '-q', nonce], null);
  });

  it('exits 1 naming the problem for a bank that is not active', async () => {
    await expect(agent(['tpm', 'pcrs', '--tcti', swtpm.tcti, '--bank', 'sha1'])).rejects.toMatchObject({
      code: 1,
      stderr: 'Error (ERR_CLI_USAGE): PCR bank sha1 is not active on this TPM (active: sha256)\n',
    });
  });

  it('leaves no transient objects or sessions on the TPM after the commands above', async () => {
    const transient = await tpm2('tpm2_getcap', ['handles-transient'], swtpm.tcti);
    const sessions = await tpm2('tpm2_getcap', ['handles-loaded-session'], swtpm.tcti);
    expect(transient.trim()).toBe('');
    expect(sessions.trim()).toBe('');
  });

  it('shows a real EK certificate with an empty subject (STMicro ST33, as the TCG profile allows)', async () => {
    // The vendor's certificate written where an ECC P-256 EK certificate lives; info only lists it.
    const index = '0x01c0000a';
    const der = Buffer.from(
      await readFile(fixturePath('ek-vendor', 'STM_ST33HTPHAHB4_EK_ECC.b64'), 'utf8'),
      'base64',
    );
    const file = join(swtpm.dir, 'stm-ek.der');
    await writeFile(file, der);
    await tpm2(
      'tpm2_nvdefine',
      [index, '-C', 'o', '-s', String(der.length), '-a', 'ownerread|ownerwrite|authread|authwrite'],
      swtpm.tcti,
    );
    try {
      await tpm2('tpm2_nvwrite', [index, '-C', 'o', '-i', file], swtpm.tcti);
      const out = await agent(['tpm', 'info', '--tcti', swtpm.tcti]);
      expect(out).toMatch(
        /0x1c0000a \(ecc-p256\): subject "", issuer "[^"]*STMicroelectronics[^"]*", serial/,
      );
    } finally {
      await tpm2('tpm2_nvundefine', [index, '-C', 'o'], swtpm.tcti);
    }
  });

  it('rejects a malformed PCR selection before touching the TPM', async () => {
    await expect(
      agent(['tpm', 'quote', '--tcti', 'swtpm:host=127.0.0.1,port=1', '--pcrs', 'sha256']),
    ).rejects.toMatchObject({
      code: 1,
      stderr: expect.stringContaining('is not a PCR selection like sha256:0,1,7'),
    });
  });
});

describe('ironroot-agent tpm eventlog', () => {
  it('replays a real firmware log through the executable to the PCRs its source asserts', async () => {
    const name = 'go-attestation/sb_cert_eventlog';
    const expected = JSON.parse(
      await readFile(fixturePath('eventlogs/expected_pcrs.json'), 'utf8'),
    ) as Record<string, { pcrs: Record<string, Record<string, string>> }>;
    const out = JSON.parse(await agent(['tpm', 'eventlog', fixturePath(`eventlogs/${name}`), '--json'])) as {
      pcrs: Record<string, Record<string, string>>;
    };
    const sha256 = out.pcrs.sha256 ?? {};
    expect(Object.keys(sha256).length).toBeGreaterThan(0);
    for (const [pcr, value] of Object.entries(sha256)) expect(value).toBe(expected[name]?.pcrs.sha256?.[pcr]);
  });
});
