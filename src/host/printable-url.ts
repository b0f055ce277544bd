/**
 * URLs as logs show them.
 *
 * @module
 */

/**
 * `url` as logs, health and messages show it: without its query and fragment, which can carry a
 * credential (a presigned object-store URL's signature, a token), and without user:password.
 */
export function printableUrl(url: string): string {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    return url.replace(/[?#].*$/s, '?…');
  }
  const withheld = parsed.search !== '' || parsed.hash !== '' ? '?…' : '';
  return `${parsed.protocol}//${parsed.host}${parsed.pathname}${withheld}`;
}
