/**
 * The MakeCredential outputs: TPM2B_ID_OBJECT and TPM2B_ENCRYPTED_SECRET (Part 2 §12.4.3, §11.4.33),
 * and the tpm2-tools file that carries both.
 *
 * @module
 */
import { TpmError } from '../errors.js';
import { TpmReader, TpmWriter } from './buffer.js';

/** TPMS_ID_OBJECT: the HMAC over the encrypted credential, and the encrypted credential itself. */
export interface IdObject {
  readonly integrityHmac: Uint8Array;
  readonly encIdentity: Uint8Array;
}

/** Decodes the contents of a TPM2B_ID_OBJECT (what follows its size field). */
export function parseIdObject(body: Uint8Array): IdObject {
  const r = new TpmReader(body);
  const integrityHmac = r.tpm2b('TPMS_ID_OBJECT.integrityHMAC', 64);
  return { integrityHmac, encIdentity: r.bytes(r.remaining) };
}

/** Contents of a TPM2B_ID_OBJECT (without its size field). */
export function marshalIdObject(id: IdObject): Uint8Array {
  return new TpmWriter().tpm2b(id.integrityHmac).bytes(id.encIdentity).finish();
}

/** The credential a verifier sends: `credentialBlob` (TPM2B_ID_OBJECT body) and `secret`. */
export interface CredentialChallenge {
  readonly credentialBlob: Uint8Array;
  /** TPM2B_ENCRYPTED_SECRET body: RSA-OAEP ciphertext or a marshalled TPMS_ECC_POINT. */
  readonly secret: Uint8Array;
}

const TPM2_TOOLS_MAGIC = 0xbadcc0de;

/** Decodes `tpm2_makecredential -o` output: BADCC0DE ‖ version 1 ‖ TPM2B_ID_OBJECT ‖ TPM2B_ENCRYPTED_SECRET. */
export function parseTpm2ToolsCredential(bytes: Uint8Array): CredentialChallenge {
  const r = new TpmReader(bytes);
  const magic = r.u32('magic');
  const version = r.u32('version');
  if (magic !== TPM2_TOOLS_MAGIC || version !== 1) {
    throw new TpmError('ERR_TPM_MALFORMED', 'not a tpm2-tools credential file (expected BADCC0DE version 1)');
  }
  const credentialBlob = r.tpm2b('TPM2B_ID_OBJECT');
  const secret = r.tpm2b('TPM2B_ENCRYPTED_SECRET');
  r.end('credential file');
  return { credentialBlob, secret };
}

/** Encodes the tpm2-tools credential file, for `tpm2_activatecredential -i`. */
export function marshalTpm2ToolsCredential(c: CredentialChallenge): Uint8Array {
  return new TpmWriter().u32(TPM2_TOOLS_MAGIC).u32(1).tpm2b(c.credentialBlob).tpm2b(c.secret).finish();
}
