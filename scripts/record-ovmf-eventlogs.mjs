#!/usr/bin/env node
// Re-records test/fixtures/eventlogs/ovmf/: boots Debian's signed shim → grub → kernel chain under
// OVMF with a swtpm vTPM (test/helpers/qemu.ts, disk boot mode) and writes each boot's event log and
// the PCRs the guest read. Run as root on Debian with the bootstrap packages: `node scripts/record-ovmf-eventlogs.mjs`.
// The helper is TypeScript with no imports of ours, so it is transpiled on the fly rather than built.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import ts from 'typescript';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const out = join(root, 'test', 'fixtures', 'eventlogs', 'ovmf');

// The recorded boots; SOURCES.md says what each one asserts.
const RECORDINGS = [
  { name: 'debian-secureboot', secureBoot: true, kernelCmdline: 'console=ttyS0 quiet ironroot=golden' },
  {
    name: 'debian-secureboot-cmdline',
    secureBoot: true,
    kernelCmdline: 'console=ttyS0 quiet ironroot=other',
  },
  { name: 'debian-secureboot-off', secureBoot: false, kernelCmdline: 'console=ttyS0 quiet ironroot=golden' },
];

async function loadQemuHelper() {
  const source = readFileSync(join(root, 'test', 'helpers', 'qemu.ts'), 'utf8');
  const { outputText } = ts.transpileModule(source, {
    compilerOptions: { module: ts.ModuleKind.ESNext, target: ts.ScriptTarget.ES2022 },
  });
  const dir = mkdtempSync(join(tmpdir(), 'ironroot-record-'));
  const file = join(dir, 'qemu.mjs');
  writeFileSync(file, outputText);
  try {
    return await import(pathToFileURL(file).href);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

const { bootFromDisk } = await loadQemuHelper();
for (const recording of RECORDINGS) {
  const boot = await bootFromDisk({
    secureBoot: recording.secureBoot,
    kernelCmdline: recording.kernelCmdline,
  });
  const pcrs = Object.fromEntries(
    [...boot.pcrs].map(([bank, values]) => [
      bank,
      Object.fromEntries([...values].map(([pcr, value]) => [String(pcr), value.toString('hex')])),
    ]),
  );
  writeFileSync(join(out, `${recording.name}.bin`), boot.eventLog);
  writeFileSync(join(out, `${recording.name}.pcrs.json`), `${JSON.stringify(pcrs, null, 2)}\n`);
  process.stdout.write(
    `${recording.name}: ${boot.eventLog.length} bytes of event log, banks ${[...boot.pcrs.keys()].join(' ')}, booted in ${boot.durationMs} ms\n`,
  );
}
