import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { akSummary } from '../../src/server/nodeattestor/tpm.js';
import { akTemplate, marshalTpm2bPublic, TPM_ALG, TPM_ECC } from '../../src/tpm/index.js';

describe('akSummary (agent show)', () => {
  it.each(['rsa2048', 'ecc-p256'] as const)('names a %s AK as the agent does, with its hash', (kind) => {
    const bytes = marshalTpm2bPublic(akTemplate(kind));
    expect(akSummary(bytes)).toEqual({
      sha256: createHash('sha256').update(bytes).digest('hex'),
      algorithm: kind,
    });
  });

  it('names other curves by their TPM_ECC name', () => {
    const template = akTemplate('ecc-p256');
    if (template.type !== TPM_ALG.ECC) throw new Error('not an ECC template');
    const bytes = marshalTpm2bPublic({
      ...template,
      parameters: { ...template.parameters, curveId: TPM_ECC.BN_P256 },
    });
    expect(akSummary(bytes).algorithm).toBe('ecc-bn_p256');
  });

  it('says "unreadable" for bytes that are no TPM2B_PUBLIC, and still hashes them', () => {
    const bytes = new Uint8Array([1]);
    expect(akSummary(bytes)).toEqual({
      sha256: createHash('sha256').update(bytes).digest('hex'),
      algorithm: 'unreadable',
    });
  });
});
