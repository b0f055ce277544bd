#!/usr/bin/env node
import { main } from '../dist/agent/cli/main.js';

main(process.argv).catch((error) => {
  process.stderr.write(`ironroot-agent: ${error instanceof Error ? error.message : String(error)}\n`);
  process.exitCode = 1;
});
