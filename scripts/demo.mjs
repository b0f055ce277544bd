#!/usr/bin/env node
// `npm run demo` (after bootstrap and the build): ironroot end to end on embedded defaults. The demo
// itself is TypeScript, src/demo/main.ts, compiled to dist/; `--help` lists its options.
import { existsSync } from 'node:fs';

const entry = new URL('../dist/demo/main.js', import.meta.url);
if (!existsSync(entry)) {
  process.stderr.write(
    'demo: dist/ is not built; run "npm run demo" (or "npx tsc -p tsconfig.build.json" first)\n',
  );
  process.exit(1);
}
const { main } = await import(entry.href);
process.exit(await main(process.argv.slice(2)));
