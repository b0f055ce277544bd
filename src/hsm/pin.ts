/**
 * @module
 * Reading the user PIN from its pin-source. The PIN is wrapped so that logging, `String()`, JSON and
 * util.inspect of it (or of anything holding it) never show the digits.
 */
import { readFile, stat } from 'node:fs/promises';
import { inspect } from 'node:util';
import { HsmError } from './errors.js';
import type { PinSource } from './pkcs11-uri.js';

const REDACTED = 'Pin<redacted>';

export class Pin {
  readonly #value: string;

  constructor(value: string) {
    this.#value = value;
  }

  /** The PIN itself; call only where it is handed to C_Login. */
  reveal(): string {
    return this.#value;
  }

  toString(): string {
    return REDACTED;
  }

  toJSON(): string {
    return REDACTED;
  }

  [inspect.custom](): string {
    return REDACTED;
  }
}

function pinError(message: string, cause?: unknown): HsmError {
  return new HsmError('ERR_HSM_PIN_SOURCE', message, { cause });
}

/**
 * Reads the PIN. A pin file must be a regular file that only its owner can read or write: a PIN that
 * others could read is no secret, so such a file is refused rather than used.
 */
export async function readPin(source: PinSource): Promise<Pin> {
  if (source.kind === 'env') {
    const value = process.env[source.name];
    if (value === undefined || value === '') {
      throw pinError(
        `pin-source env:${source.name}: the environment variable is not set or empty; set it to the token's user PIN`,
      );
    }
    return new Pin(value);
  }
  const { path } = source;
  let info: Awaited<ReturnType<typeof stat>>;
  let text: string;
  try {
    info = await stat(path);
    if (!info.isFile())
      throw pinError(`pin-source file ${path} is not a regular file; point pin-source at the PIN file`);
    if ((info.mode & 0o077) !== 0) {
      const mode = (info.mode & 0o777).toString(8).padStart(4, '0');
      throw pinError(
        `pin-source file ${path} has mode ${mode} and is open to group or others; run chmod 600 ${path} (and consider changing the PIN)`,
      );
    }
    text = await readFile(path, 'utf8');
  } catch (error) {
    if (error instanceof HsmError) throw error;
    const code = (error as NodeJS.ErrnoException).code ?? 'error';
    throw pinError(
      `pin-source file ${path} cannot be read (${code}); create it with the user PIN, owned by the server's user, mode 0600`,
      error,
    );
  }
  // Editors add a final newline; the PIN is everything before it.
  const value = text.replace(/\r?\n$/, '');
  if (value === '') throw pinError(`pin-source file ${path} is empty; write the token's user PIN into it`);
  return new Pin(value);
}
