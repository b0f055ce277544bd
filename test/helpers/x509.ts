import { execFile } from 'node:child_process';
import { type KeyObject, webcrypto, X509Certificate } from 'node:crypto';
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { createKeySigner } from '../../src/spiffe/key-signer.js';
import { newKeyPair } from '../../src/spiffe/new-key-pair.js';
// Through the library's re-export, which loads the Reflect polyfill @peculiar/x509 needs first.
import * as px from '../../src/spiffe/peculiar.js';
import type { Signer } from '../../src/spiffe/signer.js';

const run = promisify(execFile);

/**
 * A P-256 certificate valid for a day, made by `openssl req -x509` into `cert` and `key` (0600):
 * self-signed, or issued by `issuer`. Each of `extensions` is one `-addext` value.
 */
export async function opensslCert(o: {
  cert: string;
  key: string;
  subject: string;
  extensions?: readonly string[];
  issuer?: { cert: string; key: string };
}): Promise<void> {
  await run('openssl', [
    'req',
    '-x509',
    '-newkey',
    'ec',
    '-pkeyopt',
    'ec_paramgen_curve:P-256',
    '-nodes',
    '-days',
    '1',
    '-subj',
    o.subject,
    ...(o.extensions ?? []).flatMap((e) => ['-addext', e]),
    ...(o.issuer ? ['-CA', o.issuer.cert, '-CAkey', o.issuer.key] : []),
    '-keyout',
    o.key,
    '-out',
    o.cert,
  ]);
  chmodSync(o.key, 0o600);
}

/** A fresh P-256 key pair with a Signer over it. */
export function p256(): { privateKey: KeyObject; publicKey: KeyObject; signer: Signer } {
  const { privateKey, publicKey } = newKeyPair('ec', { namedCurve: 'P-256' });
  return { privateKey, publicKey, signer: createKeySigner(privateKey) };
}

export interface CraftOptions {
  subject: string;
  publicKey: KeyObject;
  /** Issuer certificate and key; absent: self-signed with `selfKey`. */
  issuer?: { cert: X509Certificate; key: KeyObject };
  selfKey?: KeyObject;
  extensions: px.Extension[];
  notBefore?: Date;
  notAfter?: Date;
}

/**
 * Builds a certificate with exactly the given extensions, signed through Node's own WebCrypto (not the
 * library's Signer adapter), so tests can make the malformed SVIDs the library must reject.
 */
export async function craft(o: CraftOptions): Promise<X509Certificate> {
  const signingKeyObject = o.issuer?.key ?? o.selfKey;
  if (signingKeyObject === undefined) throw new TypeError('craft needs an issuer or selfKey');
  const signingKey = await webcrypto.subtle.importKey(
    'pkcs8',
    signingKeyObject.export({ type: 'pkcs8', format: 'der' }),
    { name: 'ECDSA', namedCurve: 'P-256' },
    false,
    ['sign'],
  );
  const cert = await px.X509CertificateGenerator.create(
    {
      subject: o.subject,
      issuer: o.issuer ? new px.X509Certificate(o.issuer.cert.raw).subjectName : o.subject,
      publicKey: new Uint8Array(o.publicKey.export({ type: 'spki', format: 'der' })),
      signingKey,
      signingAlgorithm: { name: 'ECDSA', hash: 'SHA-256' },
      notBefore: o.notBefore ?? new Date(Date.now() - 60_000),
      notAfter: o.notAfter ?? new Date(Date.now() + 3_600_000),
      extensions: o.extensions,
    },
    webcrypto,
  );
  return new X509Certificate(Buffer.from(cert.rawData));
}

/** Extensions of a well-formed leaf for `uri`, with overrides by name. */
export function leafExtensions(
  uri: string,
  override: Partial<Record<'bc' | 'ku' | 'eku' | 'san', px.Extension | null>> = {},
): px.Extension[] {
  const base = {
    bc: new px.BasicConstraintsExtension(false, undefined, true),
    ku: new px.KeyUsagesExtension(px.KeyUsageFlags.digitalSignature, true),
    eku: new px.ExtendedKeyUsageExtension([px.ExtendedKeyUsage.serverAuth, px.ExtendedKeyUsage.clientAuth]),
    san: new px.SubjectAlternativeNameExtension([{ type: 'url', value: uri }], true),
    ...override,
  };
  return Object.values(base).filter((e): e is px.Extension => e !== null);
}

/** Extensions of a well-formed signing certificate for trust domain ID `uri`, with overrides. */
export function caExtensions(
  uri: string,
  override: Partial<Record<'bc' | 'ku' | 'san', px.Extension | null>> = {},
): px.Extension[] {
  const base = {
    bc: new px.BasicConstraintsExtension(true, undefined, true),
    ku: new px.KeyUsagesExtension(px.KeyUsageFlags.keyCertSign | px.KeyUsageFlags.cRLSign, true),
    san: new px.SubjectAlternativeNameExtension([{ type: 'url', value: uri }]),
    ...override,
  };
  return Object.values(base).filter((e): e is px.Extension => e !== null);
}

export { px };

/** A temporary directory for openssl's input files, removed by `cleanup`. */
export function tempDir(): {
  dir: string;
  write: (name: string, text: string) => string;
  cleanup: () => void;
} {
  const dir = mkdtempSync(join(tmpdir(), 'ironroot-x509-'));
  return {
    dir,
    write: (name, text) => {
      const path = join(dir, name);
      writeFileSync(path, text);
      return path;
    },
    cleanup: () => rmSync(dir, { recursive: true, force: true }),
  };
}

/** `openssl x509 -text` of a certificate. */
export async function opensslText(certPath: string): Promise<string> {
  const { stdout } = await run('openssl', ['x509', '-in', certPath, '-noout', '-text']);
  return stdout;
}

/**
 * `openssl verify` of `leaf` against `root` with optional `untrusted` intermediates and `-attime`.
 * Resolves to openssl's verdict and output instead of throwing, so tests can assert either way.
 */
export async function opensslVerify(
  root: string,
  leaf: string,
  options: { untrusted?: string; at?: Date } = {},
): Promise<{ ok: boolean; output: string }> {
  const args = ['verify', '-CAfile', root, '-x509_strict'];
  if (options.untrusted) args.push('-untrusted', options.untrusted);
  if (options.at) args.push('-attime', String(Math.floor(options.at.getTime() / 1000)));
  args.push(leaf);
  try {
    const { stdout, stderr } = await run('openssl', args);
    return { ok: true, output: stdout + stderr };
  } catch (err) {
    const e = err as { stdout?: string; stderr?: string };
    return { ok: false, output: `${e.stdout ?? ''}${e.stderr ?? ''}` };
  }
}

/**
 * `cert` with its EC public point moved off the curve: it still parses as a certificate (OpenSSL
 * decodes the key only when asked), but its key cannot be loaded. The fuzzer's first finding.
 */
export function withUndecodableKey(cert: X509Certificate): Buffer {
  const der = Buffer.from(cert.raw);
  const point = cert.publicKey.export({ type: 'spki', format: 'der' }).subarray(-65);
  const at = der.indexOf(point);
  if (at < 0) throw new Error('public point not found in the certificate');
  der[at + 64] = (der[at + 64] ?? 0) ^ 0x01;
  return der;
}
