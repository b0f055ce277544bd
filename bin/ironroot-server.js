#!/usr/bin/env node
import { formatCliError } from '../dist/host/index.js';
import { main } from '../dist/server/cli/main.js';

// main reports a failed command itself (Error (ERR_CODE): …); this catches only what escapes that.
main(process.argv).catch((error) => {
  process.stderr.write(formatCliError(error, 'text'));
  process.exitCode = 1;
});
