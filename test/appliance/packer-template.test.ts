/**
 * packer/ironroot.pkr.hcl as Debian's packer reads it (`packer validate`): the template parses, its
 * qemu source accepts the variables scripts/build-image.mjs passes, and the variant is checked.
 * No boot: the image build itself boots it.
 */
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { repoRoot } from '../helpers/dist.js';

const run = promisify(execFile);

describe('the packer template of the appliance image', () => {
  let dir: string;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'ironroot-packer-'));
    await run('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', join(dir, 'key')]);
  });

  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  async function validate(variant: string): Promise<{ code: number; output: string }> {
    const vars = {
      variant,
      disk_image: join(dir, 'disk.raw'),
      output_directory: join(dir, 'out'),
      ssh_private_key_file: join(dir, 'key'),
      swtpm_socket: join(dir, 'swtpm.sock'),
      ovmf_vars: join(dir, 'OVMF_VARS.fd'),
      serial_log: join(dir, 'serial.log'),
      download_directory: dir,
    };
    const args = [
      'validate',
      ...Object.entries(vars).flatMap(([k, v]) => ['-var', `${k}=${v}`]),
      'ironroot.pkr.hcl',
    ];
    try {
      const { stdout, stderr } = await run('packer', args, {
        cwd: join(repoRoot, 'packer'),
        env: { ...process.env, CHECKPOINT_DISABLE: '1' },
      });
      return { code: 0, output: stdout + stderr };
    } catch (error) {
      const e = error as { code?: number; stdout?: string; stderr?: string };
      return { code: e.code ?? 1, output: `${e.stdout ?? ''}${e.stderr ?? ''}` };
    }
  }

  it.each(['agent', 'server'])('is valid for the %s variant', async (variant) => {
    const result = await validate(variant);
    expect(result.code, result.output).toBe(0);
  });

  it('refuses any other variant, naming the allowed ones', async () => {
    const result = await validate('workstation');
    expect(result.code).not.toBe(0);
    expect(result.output).toContain('The variant must be agent or server.');
  });
});
