/**
 * The attestation key's public area, judged before the verifier binds anything to it.
 *
 * A quote is only worth something if the key that signed it cannot sign arbitrary data
 * (`restricted`: the TPM refuses to sign data that starts with TPM_GENERATED_VALUE unless the TPM
 * produced it) and cannot leave the TPM (`fixedTPM`, `fixedParent`, and `sensitiveDataOrigin` so the
 * TPM, not the caller, made the private key). An AK that can also decrypt is not a TCG AK.
 *
 * @module
 */
import { TPM_ALG, TPM_ECC } from '../codec/constants.js';
import type { ObjectAttributeName, TpmtPublic } from '../codec/public.js';
import { TpmVerifyError } from './errors.js';

const REQUIRED: readonly ObjectAttributeName[] = [
  'restricted',
  'sign',
  'fixedTPM',
  'fixedParent',
  'sensitiveDataOrigin',
];
const FORBIDDEN: readonly ObjectAttributeName[] = ['decrypt'];

/** Smallest RSA AK accepted: TCG-compliant TPMs support 2048, and shorter keys are breakable. */
const MIN_RSA_BITS = 2048;
const ECC_CURVES: ReadonlySet<number> = new Set([TPM_ECC.NIST_P256, TPM_ECC.NIST_P384, TPM_ECC.NIST_P521]);

/**
 * Checks that `ak` is a restricted signing key bound to its TPM: `restricted`, `sign`, `fixedTPM`,
 * `fixedParent` and `sensitiveDataOrigin` set, `decrypt` clear; an RSA key of at least 2048 bits or
 * an ECC key on a NIST curve. Call it before computing the AK's Name for MakeCredential.
 *
 * @throws TpmVerifyError ERR_TPM_AK_ATTRIBUTES naming every attribute that is missing or must not be
 *   set, and any key-size or curve problem.
 */
export function checkAkPublic(ak: TpmtPublic): void {
  const problems: string[] = [];
  const missing = REQUIRED.filter((name) => !ak.objectAttributes[name]);
  const extra = FORBIDDEN.filter((name) => ak.objectAttributes[name]);
  if (missing.length > 0) problems.push(`missing ${missing.join(', ')}`);
  if (extra.length > 0) problems.push(`must not have ${extra.join(', ')}`);
  if (ak.type === TPM_ALG.RSA && ak.parameters.keyBits < MIN_RSA_BITS)
    problems.push(`RSA key of ${ak.parameters.keyBits} bits is shorter than ${MIN_RSA_BITS}`);
  if (ak.type === TPM_ALG.ECC && !ECC_CURVES.has(ak.parameters.curveId))
    problems.push(`curve 0x${ak.parameters.curveId.toString(16)} is not NIST P-256, P-384 or P-521`);
  if (problems.length > 0)
    throw new TpmVerifyError(
      'ERR_TPM_AK_ATTRIBUTES',
      `the AK is not a restricted signing key fixed to its TPM: ${problems.join('; ')}; ` +
        'the agent must create its AK as tpm2_createak does (restricted|sign|fixedtpm|fixedparent|sensitivedataorigin)',
    );
}
