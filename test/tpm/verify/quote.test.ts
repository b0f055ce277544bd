import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TPM_ALG } from '../../../src/tpm/codec/constants.js';
import { type PcrSelection, pcrSelection } from '../../../src/tpm/codec/pcr.js';
import {
  type ObjectAttributeName,
  objectAttributes,
  type ParsedPublic,
  parseTpm2bPublic,
  type TpmtPublic,
} from '../../../src/tpm/codec/public.js';
import { parseSignature } from '../../../src/tpm/codec/signature.js';
import { TpmError, type TpmErrorCode } from '../../../src/tpm/errors.js';
import { checkAkPublic } from '../../../src/tpm/verify/ak.js';
import { type QuoteInput, verifyQuote } from '../../../src/tpm/verify/quote.js';
import { createAk, type EkKind, loadAk, readOut, startTestTpm, type TestTpm, writeIn } from './harness.js';

let tpm: TestTpm;

const PCRS = [0, 1, 2, 16];
const SELECTION: PcrSelection[] = [pcrSelection(TPM_ALG.SHA256, PCRS)];

interface Recorded {
  readonly input: QuoteInput;
  readonly ak: ParsedPublic;
  readonly signature: Buffer;
}

/** For each AK under test, another AK of the same type in the same TPM. */
const OTHER_AK = { 'ak-rsa': 'ak-other', 'ak-pss': 'ak-other', 'ak-ecc': 'ak-ecc-other' } as const;

function expectCode(fn: () => unknown, code: TpmErrorCode, message?: RegExp): void {
  let thrown: unknown;
  try {
    fn();
  } catch (err) {
    thrown = err;
  }
  expect(thrown instanceof TpmError && thrown.code === code, `expected ${code}, got ${String(thrown)}`).toBe(
    true,
  );
  if (message) expect(String(thrown)).toMatch(message);
}

async function akPublic(name: string): Promise<ParsedPublic> {
  return parseTpm2bPublic(await readOut(tpm, `${name}.pub`));
}

/** tpm2_quote with AK `name` over sha256:0,1,2,16; the PCR values come from the same command. */
async function quote(ek: EkKind, name: string, nonce: Buffer): Promise<Recorded> {
  // tpm2_quote asks for RSASSA unless told; a restricted key only signs with its own scheme.
  const pss = (await akPublic(name)).area.parameters.scheme.scheme === TPM_ALG.RSAPSS;
  await loadAk(tpm, ek, name);
  try {
    await tpm.tool('tpm2_quote', [
      '-c',
      `${name}.ctx`,
      '-l',
      'sha256:0,1,2,16',
      '-q',
      nonce.toString('hex'),
      '-m',
      `${name}.quote`,
      '-s',
      `${name}.sig`,
      '-o',
      `${name}.pcrs`,
      '-F',
      'values',
      '-g',
      'sha256',
      ...(pss ? ['--scheme', 'rsapss'] : []),
    ]);
  } finally {
    await tpm.tool('tpm2_flushcontext', ['-t']);
  }
  const values = await readOut(tpm, `${name}.pcrs`);
  const pcrValues: Buffer[] = [];
  for (let at = 0; at < values.length; at += 32) pcrValues.push(values.subarray(at, at + 32));
  const ak = await akPublic(name);
  const signature = await readOut(tpm, `${name}.sig`);
  return {
    ak,
    signature,
    input: {
      akPublic: ak.area,
      attest: await readOut(tpm, `${name}.quote`),
      signature,
      nonce,
      pcrSelection: SELECTION,
      pcrValues,
    },
  };
}

beforeAll(async () => {
  tpm = await startTestTpm();
  // PCR 16 is resettable and debug-only; extending it makes one quoted value non-zero.
  await tpm.tool('tpm2_pcrextend', [`16:sha256=${randomBytes(32).toString('hex')}`]);
  await createAk(tpm, 'rsa', 'ak-rsa', 'rsa', 'rsassa');
  await createAk(tpm, 'rsa', 'ak-pss', 'rsa', 'rsapss');
  await createAk(tpm, 'ecc', 'ak-ecc', 'ecc', 'ecdsa');
  await createAk(tpm, 'rsa', 'ak-other', 'rsa', 'rsassa');
  await createAk(tpm, 'ecc', 'ak-ecc-other', 'ecc', 'ecdsa');
});

afterAll(async () => {
  await tpm?.stop();
});

describe.each([
  ['RSASSA AK under the RSA EK', 'rsa', 'ak-rsa'],
  ['RSAPSS AK under the RSA EK', 'rsa', 'ak-pss'],
  ['ECDSA AK under the P-384 EK', 'ecc', 'ak-ecc'],
] as const)('tpm2_quote with an %s', (_label, ek, name) => {
  let recorded: Recorded;

  beforeAll(async () => {
    recorded = await quote(ek, name, randomBytes(20));
  });

  it('passes the AK attribute check', () => {
    expect(() => checkAkPublic(recorded.ak.area)).not.toThrow();
  });

  it('is accepted, with the clock info tpm2_readclock and tpm2_getcap report', async () => {
    const verified = verifyQuote(recorded.input);
    const clock = await tpm.tool('tpm2_readclock', []);
    expect(verified.clockInfo.resetCount).toBe(Number(/reset_count: (\d+)/.exec(clock)?.[1]));
    expect(verified.clockInfo.restartCount).toBe(Number(/restart_count: (\d+)/.exec(clock)?.[1]));
    const props = await tpm.tool('tpm2_getcap', ['properties-fixed']);
    const fw1 = /TPM2_PT_FIRMWARE_VERSION_1:\s*raw: (0x[0-9a-fA-F]+)/.exec(props)?.[1];
    const fw2 = /TPM2_PT_FIRMWARE_VERSION_2:\s*raw: (0x[0-9a-fA-F]+)/.exec(props)?.[1];
    expect(verified.firmwareVersion).toBe((BigInt(fw1 ?? 'x') << 32n) | BigInt(fw2 ?? 'x'));
    expect(verified.pcrs.map((p) => p.pcr)).toEqual(PCRS);
    expect(verified.pcrs.every((p) => p.hash === TPM_ALG.SHA256)).toBe(true);
  });

  it('is also accepted by the oracle (tpm2_checkquote; openssl for RSAPSS)', async () => {
    await loadAk(tpm, ek, name);
    try {
      await tpm.tool('tpm2_readpublic', ['-c', `${name}.ctx`, '-f', 'pem', '-o', `${name}.pem`]);
    } finally {
      await tpm.tool('tpm2_flushcontext', ['-t']);
    }
    if (name === 'ak-pss') {
      // tpm2_checkquote 5.4 cannot check swtpm's PSS signatures (salt = digest length): it reports
      // "Error validating signed message". openssl checks the signature alone, with that salt length.
      await writeIn(tpm, `${name}.rawsig`, recorded.signature.subarray(6));
      const args = ['dgst', '-sha256', '-verify', `${name}.pem`, '-sigopt', 'rsa_padding_mode:pss'];
      args.push('-sigopt', 'rsa_pss_saltlen:digest', '-signature', `${name}.rawsig`, `${name}.quote`);
      await expect(tpm.tool('openssl', args)).resolves.toMatch(/Verified OK/);
      return;
    }
    const args = ['-u', `${name}.pem`, '-m', `${name}.quote`, '-s', `${name}.sig`, '-f', `${name}.pcrs`];
    args.push(
      '-l',
      'sha256:0,1,2,16',
      '-q',
      Buffer.from(recorded.input.nonce).toString('hex'),
      '-g',
      'sha256',
    );
    await expect(tpm.tool('tpm2_checkquote', args)).resolves.toBeTypeOf('string');
  });

  it('is rejected for another nonce', () => {
    expectCode(
      () => verifyQuote({ ...recorded.input, nonce: randomBytes(20) }),
      'ERR_TPM_QUOTE_NONCE',
      /not qualified by the nonce/,
    );
  });

  it('is rejected when a reported PCR value was changed', () => {
    const pcrValues = recorded.input.pcrValues.map((v, i) => (i === 3 ? Buffer.alloc(32, 0x11) : v));
    expectCode(
      () => verifyQuote({ ...recorded.input, pcrValues }),
      'ERR_TPM_QUOTE_PCR_DIGEST',
      /do not hash/,
    );
  });

  it('is rejected when a PCR value is missing or extra', () => {
    const fewer = recorded.input.pcrValues.slice(1);
    expectCode(
      () => verifyQuote({ ...recorded.input, pcrValues: fewer }),
      'ERR_TPM_QUOTE_PCR_DIGEST',
      /3 PCR values/,
    );
  });

  it('is rejected with a flipped signature byte', () => {
    const signature = Buffer.from(recorded.signature);
    const at = signature.length - 5;
    signature.writeUInt8(signature.readUInt8(at) ^ 0x01, at);
    expectCode(
      () => verifyQuote({ ...recorded.input, signature }),
      'ERR_TPM_QUOTE_SIGNATURE',
      /does not verify/,
    );
  });

  it('is rejected with a flipped byte in the attested data', () => {
    const attest = Buffer.from(recorded.input.attest);
    attest.writeUInt8(attest.readUInt8(20) ^ 0x01, 20);
    expectCode(() => verifyQuote({ ...recorded.input, attest }), 'ERR_TPM_QUOTE_SIGNATURE');
  });

  it('is rejected when checked against another AK', async () => {
    const other = await akPublic(OTHER_AK[name]);
    expectCode(() => verifyQuote({ ...recorded.input, akPublic: other.area }), 'ERR_TPM_QUOTE_SIGNATURE');
  });

  it('is rejected when another PCR selection was asked for', () => {
    const asked = [pcrSelection(TPM_ALG.SHA256, [0, 1, 2, 7])];
    expectCode(
      () => verifyQuote({ ...recorded.input, pcrSelection: asked }),
      'ERR_TPM_QUOTE_PCR_SELECTION',
      /covers sha256:0,1,2,16, but sha256:0,1,2,7 was asked for/,
    );
  });
});

describe('quote details', () => {
  it('digests PCRs with the signing hash, not the AK nameAlg (the P-384 EK gives its AK SHA-384 names)', async () => {
    const recorded = await quote('ecc', 'ak-ecc', randomBytes(16));
    expect(recorded.ak.area.nameAlg).toBe(TPM_ALG.SHA384);
    const verified = verifyQuote(recorded.input);
    expect(verified.attest.attested.kind === 'quote' && verified.attest.attested.pcrDigest.length).toBe(32);
  });

  it('rejects a signature whose scheme is not the AK scheme, and any SHA-1 signature', async () => {
    const { input, signature } = await quote('rsa', 'ak-rsa', randomBytes(16));
    const sig = parseSignature(signature);
    if (sig.sigAlg !== TPM_ALG.RSASSA || input.akPublic.type !== TPM_ALG.RSA)
      throw new Error('expected RSASSA');
    expectCode(
      () => verifyQuote({ ...input, signature: { ...sig, sigAlg: TPM_ALG.RSAPSS } }),
      'ERR_TPM_QUOTE_SIGNATURE',
      /signed with rsapss-sha256, but the AK's scheme is rsassa-sha256/,
    );
    const schemeless: TpmtPublic = {
      ...input.akPublic,
      parameters: { ...input.akPublic.parameters, scheme: { scheme: TPM_ALG.NULL, hashAlg: TPM_ALG.NULL } },
    };
    expectCode(
      () => verifyQuote({ ...input, akPublic: schemeless, signature: { ...sig, hash: TPM_ALG.SHA1 } }),
      'ERR_TPM_QUOTE_SIGNATURE',
      /SHA-1, which is not accepted/,
    );
  });

  it('rejects a TPM2_Certify attestation signed by the AK as not a quote', async () => {
    await loadAk(tpm, 'rsa', 'ak-rsa');
    try {
      await tpm.tool('tpm2_certify', [
        '-c',
        'ak-rsa.ctx',
        '-C',
        'ak-rsa.ctx',
        '-g',
        'sha256',
        '-o',
        'certify.attest',
        '-s',
        'certify.sig',
      ]);
    } finally {
      await tpm.tool('tpm2_flushcontext', ['-t']);
    }
    const { input } = await quote('rsa', 'ak-rsa', randomBytes(16));
    const certify = {
      attest: await readOut(tpm, 'certify.attest'),
      signature: await readOut(tpm, 'certify.sig'),
    };
    expectCode(
      () => verifyQuote({ ...input, ...certify }),
      'ERR_TPM_QUOTE_TYPE',
      /0x8017, not TPM_ST_ATTEST_QUOTE/,
    );
  });

  it('rejects data without the TPM_GENERATED magic, signed by an unrestricted key, and that key as an AK', async () => {
    const { input } = await quote('rsa', 'ak-rsa', randomBytes(16));
    const forged = Buffer.from(input.attest);
    forged.writeUInt32BE(0xff544346, 0);
    await writeIn(tpm, 'forged.attest', forged);
    try {
      await tpm.tool('tpm2_createprimary', ['-C', 'o', '-c', 'primary.ctx']);
      await tpm.tool('tpm2_create', [
        '-C',
        'primary.ctx',
        '-G',
        'rsa2048:rsassa-sha256:null',
        '-a',
        'fixedtpm|fixedparent|sensitivedataorigin|userwithauth|sign',
        '-u',
        'signer.pub',
        '-r',
        'signer.priv',
        '-c',
        'signer.ctx',
      ]);
      // swtpm has three transient slots: free them, tpm2_sign reloads the signer from its context.
      await tpm.tool('tpm2_flushcontext', ['-t']);
      await tpm.tool('tpm2_sign', [
        '-c',
        'signer.ctx',
        '-g',
        'sha256',
        '-s',
        'rsassa',
        '-o',
        'forged.sig',
        'forged.attest',
      ]);
    } finally {
      await tpm.tool('tpm2_flushcontext', ['-t']);
    }
    const signer = await akPublic('signer');
    const forgedInput = {
      ...input,
      akPublic: signer.area,
      attest: forged,
      signature: await readOut(tpm, 'forged.sig'),
    };
    expectCode(() => verifyQuote(forgedInput), 'ERR_TPM_QUOTE_MAGIC', /0xff544346, not TPM_GENERATED_VALUE/);
    expectCode(() => checkAkPublic(signer.area), 'ERR_TPM_AK_ATTRIBUTES', /missing restricted;/);
  });
});

describe('AK attribute check', () => {
  let ak: TpmtPublic;

  beforeAll(async () => {
    ak = (await akPublic('ak-rsa')).area;
  });

  function withAttributes(set: ObjectAttributeName[]): TpmtPublic {
    return { ...ak, objectAttributes: objectAttributes(...set) };
  }

  it('names every missing attribute', () => {
    expectCode(
      () => checkAkPublic(withAttributes(['sign', 'restricted', 'userWithAuth'])),
      'ERR_TPM_AK_ATTRIBUTES',
      /missing fixedTPM, fixedParent, sensitiveDataOrigin;/,
    );
  });

  it('names decrypt as an attribute an AK must not have', () => {
    expectCode(
      () =>
        checkAkPublic(
          withAttributes(['sign', 'decrypt', 'restricted', 'fixedTPM', 'fixedParent', 'sensitiveDataOrigin']),
        ),
      'ERR_TPM_AK_ATTRIBUTES',
      /must not have decrypt;/,
    );
  });

  it('refuses an RSA AK shorter than 2048 bits', () => {
    const short: TpmtPublic =
      ak.type === TPM_ALG.RSA ? { ...ak, parameters: { ...ak.parameters, keyBits: 1024 } } : ak;
    expectCode(() => checkAkPublic(short), 'ERR_TPM_AK_ATTRIBUTES', /RSA key of 1024 bits/);
  });
});
