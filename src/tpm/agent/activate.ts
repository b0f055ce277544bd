/**
 * Credential activation on the agent: proves to a verifier that the AK lives in the same TPM as
 * the EK, by recovering the secret it sealed with MakeCredential.
 *
 * @module
 */
import type { CredentialChallenge } from '../codec/credential.js';
import type { LoadedObject, Tpm } from '../tpm.js';
import { AK_AUTH } from './ak.js';
import { type Ek, type EkOptions, withEkSession } from './ek.js';

/**
 * ActivateCredential with `ak` (password auth, ADMIN role allowed because the AK has no
 * adminWithPolicy) and the EK under its policy session. Fails with TPM_RC_INTEGRITY when the
 * challenge was made for another AK name or another EK.
 */
export async function activateCredential(
  tpm: Tpm,
  ek: Ek,
  ak: LoadedObject,
  challenge: CredentialChallenge,
  options: EkOptions = {},
): Promise<Uint8Array> {
  return withEkSession(
    tpm,
    ek,
    (ekAuth) =>
      tpm.activateCredential(
        ak.handle,
        AK_AUTH,
        ek.handle,
        ekAuth,
        challenge.credentialBlob,
        challenge.secret,
      ),
    options,
  );
}
