import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

/**
 * Path of a file in `../shared/` beside the checkout (CI lays it there). Fails loudly when it is
 * missing, so a test never passes by not finding its data.
 */
export function sharedPath(...parts: string[]): string {
  const path = fileURLToPath(new URL(`../../../shared/${parts.join('/')}`, import.meta.url));
  if (!existsSync(path))
    throw new Error(`shared data not found: ${path} (../shared must sit beside the checkout)`);
  return path;
}
