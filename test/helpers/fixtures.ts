import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

/**
 * Path of a file under `test/fixtures/` (origins and licences in each folder's SOURCES.md or README).
 * Fails loudly when it is missing, so a test never passes by not finding its data.
 */
export function fixturePath(...parts: string[]): string {
  const path = fileURLToPath(new URL(`../fixtures/${parts.join('/')}`, import.meta.url));
  if (!existsSync(path)) throw new Error(`test fixture not found: ${path}`);
  return path;
}
