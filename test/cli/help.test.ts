import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { builtBin } from '../helpers/dist.js';

const run = promisify(execFile);
const { version } = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as {
  version: string;
};

describe.each(['ironroot-server', 'ironroot-agent'] as const)('%s executable', (name) => {
  const bin = builtBin(name);

  it('prints usage naming itself for --help', async () => {
    const { stdout } = await run(process.execPath, [bin, '--help']);
    expect(stdout).toContain(`Usage: ${name}`);
  });

  it('prints the package version for --version', async () => {
    const { stdout } = await run(process.execPath, [bin, '--version']);
    expect(stdout.trim()).toBe(version);
  });

  it('exits 1 with ERR_CLI_USAGE, naming its --help, for an unknown command', async () => {
    await expect(run(process.execPath, [bin, 'no-such-command'])).rejects.toMatchObject({
      code: 1,
      stdout: '',
      stderr: `Error (ERR_CLI_USAGE): unknown command 'no-such-command'; see "${name} --help"\n`,
    });
  });
});
