import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { DEFAULT_EVENTLOG_PATH, eventlogCommand } from '../../../src/agent/cli/tpm-eventlog.js';
import { formatCliError } from '../../../src/host/index.js';
import { fixturePath } from '../../helpers/fixtures.js';

interface Run {
  stdout: string;
  /** What the command threw; the executable reports it with formatCliError. */
  error: unknown;
}

/** Run `eventlog ARGS` as commander would, capturing output instead of exiting the process. */
async function run(...args: string[]): Promise<Run> {
  let stdout = '';
  const command = eventlogCommand()
    .exitOverride()
    .configureOutput({
      writeOut: (s) => {
        stdout += s;
      },
    });
  try {
    await command.parseAsync(args, { from: 'user' });
    return { stdout, error: undefined };
  } catch (e) {
    return { stdout, error: e };
  }
}

const expected = JSON.parse(readFileSync(fixturePath('eventlogs', 'expected_pcrs.json'), 'utf8')) as Record<
  string,
  { pcrs: Record<string, Record<string, string>> }
>;
const mokPcrs = expected['tpm2-tools/event-moklisttrusted.bin']?.pcrs.sha256 ?? {};
const mokLog = fixturePath('eventlogs', 'tpm2-tools', 'event-moklisttrusted.bin');

describe('ironroot-agent tpm eventlog', () => {
  it('prints events with PCR, type, digests and decoded data, then the replayed PCRs', async () => {
    const { stdout, error } = await run(mokLog);
    expect(error).toBeUndefined();
    expect(stdout).toContain('format: crypto-agile, banks: sha256, 97 events');
    expect(stdout).toMatch(
      /^#\d+ PCR 7 EV_EFI_VARIABLE_DRIVER_CONFIG: SecureBoot \{8be4df61-93ca-11d2-aa0d-00e098032b8c\} = 01 \(Secure Boot enabled\)$/m,
    );
    expect(stdout).toMatch(/^#\d+ PCR 0 EV_SEPARATOR: separator 0x00000000$/m);
    expect(stdout).toContain('Secure Boot: enabled');
    expect(stdout).toContain(`     7: ${mokPcrs['7']}`);
    expect(stdout).toContain(`    14: ${mokPcrs['14']}`);
  });

  it('--json gives every event and the replayed PCRs that tpm2-tools asserts', async () => {
    const { stdout, error } = await run(mokLog, '--json');
    expect(error).toBeUndefined();
    const doc = JSON.parse(stdout) as {
      events: { index: number; typeName: string; decoded?: { kind: string; name?: string; data?: string } }[];
      summary: { secureBoot: string };
      pcrs: Record<string, Record<string, string>>;
    };
    expect(doc.events).toHaveLength(97);
    expect(doc.summary.secureBoot).toBe('enabled');
    expect(doc.pcrs.sha256).toEqual(mokPcrs);
    const sb = doc.events.find((e) => e.decoded?.name === 'SecureBoot');
    expect(sb?.decoded).toMatchObject({ kind: 'uefi-variable', data: '01' });
  });

  it('fails with the error code and byte offset for a bogus log', async () => {
    const file = fixturePath('eventlogs', 'keylime', 'binary_bios_measurements-bogus');
    const { error } = await run(file);
    expect(error).toMatchObject({ code: 'ERR_EVENTLOG_MALFORMED' });
    expect(formatCliError(error, 'text')).toContain(
      `Error (ERR_EVENTLOG_MALFORMED): ${file} at byte offset 0: `,
    );
  });

  it('reads the kernel securityfs log when no file is given', () => {
    // Checked on the command's definition: whether this host has a TPM log must not decide the test.
    expect(eventlogCommand().registeredArguments[0]?.defaultValue).toBe(DEFAULT_EVENTLOG_PATH);
    expect(DEFAULT_EVENTLOG_PATH).toBe('/sys/kernel/security/tpm0/binary_bios_measurements');
  });

  it('fails with ERR_EVENTLOG_READ naming the file it cannot read', async () => {
    const { error } = await run('/nonexistent/ironroot/eventlog');
    expect(error).toMatchObject({ code: 'ERR_EVENTLOG_READ' });
    expect(formatCliError(error, 'text')).toMatch(
      /^Error \(ERR_EVENTLOG_READ\): cannot read \/nonexistent\/ironroot\/eventlog: ENOENT/,
    );
  });
});
