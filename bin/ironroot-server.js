#!/usr/bin/env node
import { main } from '../dist/server/cli/main.js';

main(process.argv).catch((error) => {
  process.stderr.write(`ironroot-server: ${error instanceof Error ? error.message : String(error)}\n`);
  process.exitCode = 1;
});
