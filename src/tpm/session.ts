/**
 * Authorization sessions as they appear in a command's authorization area (Part 1 §18).
 *
 * ironroot uses two kinds: the password session TPM_RS_PW (for hierarchies, NV indices and keys
 * whose auth value is known, normally empty), and policy sessions that were satisfied with
 * PolicySecret/PolicyOR (the EK). Neither needs HMACs or parameter encryption, so no session
 * keys are derived here.
 *
 * @module
 */
import type { TpmWriter } from './codec/buffer.js';
import { TPM_RH, TPMA_SESSION } from './codec/constants.js';

export type AuthSession =
  | { readonly kind: 'password'; readonly password: Uint8Array }
  | { readonly kind: 'policy'; readonly handle: number };

/** TPM_RS_PW with the given password (empty by default, as hierarchies and EKs ship). */
export function passwordSession(password: Uint8Array | string = new Uint8Array()): AuthSession {
  return {
    kind: 'password',
    password: typeof password === 'string' ? new TextEncoder().encode(password) : password,
  };
}

/** A started and satisfied policy session. */
export function policySession(handle: number): AuthSession {
  return { kind: 'policy', handle };
}

/** TPMS_AUTH_COMMAND. */
export function writeAuth(w: TpmWriter, auth: AuthSession): void {
  if (auth.kind === 'password') {
    w.u32(TPM_RH.PW).tpm2b(new Uint8Array()).u8(0).tpm2b(auth.password);
  } else {
    // continueSession keeps the session alive after success, so the caller's finally-flush is the
    // one place a session ends, on success and failure alike.
    w.u32(auth.handle).tpm2b(new Uint8Array()).u8(TPMA_SESSION.continueSession).tpm2b(new Uint8Array());
  }
}
