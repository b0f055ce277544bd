/**
 * `ironroot-agent tpm …`: operator tools to look at the node's TPM the way the agent sees it.
 *
 * @module
 */
import { createHash, randomBytes, X509Certificate } from 'node:crypto';
import { Command, InvalidArgumentError, Option } from 'commander';
import { type OutputFormat as Output, withOutput } from '../../host/index.js';
// The TPM library's agent-side modules only, which `run` loads anyway: its index also brings the
// verifier's (quote and EK certificate checks, event log replay, firmware profiles).
import {
  createAk,
  EK_PROFILES,
  type EkKind,
  type PcrBank,
  quotePcrs,
  readEkCertificates,
  readPcrs,
  withAk,
  withEk,
} from '../../tpm/agent/index.js';
import { algName, TPM_HT, TPM_PT } from '../../tpm/codec/constants.js';
import { hashAlgByName, hashName } from '../../tpm/codec/hash.js';
import { type PcrSelection, pcrSelection } from '../../tpm/codec/pcr.js';
import { objectName } from '../../tpm/codec/public.js';
import { publicKeyFromArea } from '../../tpm/codec/public-key.js';
import { Tpm } from '../../tpm/tpm.js';
import { DEFAULT_TCTI, defaultTcti } from '../../tpm/transport/index.js';
import { eventlogCommand } from './tpm-eventlog.js';

interface CommonOptions {
  tcti: string;
  output: Output;
}

const hex = (bytes: Uint8Array): string => Buffer.from(bytes).toString('hex');

function common(command: Command): Command {
  return withOutput(command).addOption(
    new Option(
      '--tcti <conf>',
      `TPM to use, as a tpm2-tss TCTI string (env TPM2TOOLS_TCTI; default ${DEFAULT_TCTI})`,
    ).default(defaultTcti()),
  );
}

async function withTpm<T>(tcti: string, use: (tpm: Tpm) => Promise<T>): Promise<T> {
  const tpm = await Tpm.open(tcti);
  try {
    return await use(tpm);
  } finally {
    await tpm.close();
  }
}

function print(output: Output, json: unknown, text: string[]): void {
  process.stdout.write(output === 'json' ? `${JSON.stringify(json, null, 2)}\n` : `${text.join('\n')}\n`);
}

/**
 * A distinguished name on one line. node:crypto gives no string at all for an empty name, which the
 * TCG EK profile allows for the subject (real STMicro and Nuvoton EK certificates have one).
 */
function oneLine(name: string | undefined): string {
  return (name ?? '').replaceAll('\n', ', ');
}

/** Four-character ASCII packed in a TPM property (manufacturer, vendor strings). */
function ascii(value: number | undefined): string {
  if (value === undefined) return '';
  const bytes = Buffer.alloc(4);
  bytes.writeUInt32BE(value >>> 0);
  return bytes.toString('latin1').replace(/\0+$/, '');
}

async function info(options: CommonOptions): Promise<void> {
  await withTpm(options.tcti, async (tpm) => {
    const props = await tpm.getProperties(TPM_PT.FAMILY_INDICATOR, TPM_PT.FIRMWARE_VERSION_2);
    const get = (p: number) => props.get(p);
    const fw1 = get(TPM_PT.FIRMWARE_VERSION_1) ?? 0;
    const fw2 = get(TPM_PT.FIRMWARE_VERSION_2) ?? 0;
    const tpmInfo = {
      manufacturer: ascii(get(TPM_PT.MANUFACTURER)),
      vendor: [TPM_PT.VENDOR_STRING_1, TPM_PT.VENDOR_STRING_2, TPM_PT.VENDOR_STRING_3, TPM_PT.VENDOR_STRING_4]
        .map((p) => ascii(get(p)))
        .join('')
        .trim(),
      firmwareVersion: `${fw1.toString(16).padStart(8, '0')}${fw2.toString(16).padStart(8, '0')}`,
      specFamily: ascii(get(TPM_PT.FAMILY_INDICATOR)),
      specRevision: (get(TPM_PT.REVISION) ?? 0) / 100,
    };
    const banks = (await tpm.getPcrBanks()).map((b) => ({ bank: algName(b.hash), pcrs: b.pcrs.length }));
    const persistent = new Set(await tpm.getHandles(TPM_HT.PERSISTENT));
    const eks = [];
    for (const profile of EK_PROFILES) {
      if (!persistent.has(profile.persistentHandle)) continue;
      const { public: pub, name } = await tpm.readPublic(profile.persistentHandle);
      eks.push({
        kind: profile.kind,
        handle: `0x${profile.persistentHandle.toString(16)}`,
        name: hex(name),
        publicKeySha256: sha256(publicKeyFromArea(pub.area).export({ format: 'der', type: 'spki' })),
      });
    }
    const certificates = (await readEkCertificates(tpm)).map((c) => {
      const x509 = new X509Certificate(c.der);
      return {
        index: `0x${c.index.toString(16)}`,
        kind: c.kind,
        subject: oneLine(x509.subject),
        issuer: oneLine(x509.issuer),
        serial: x509.serialNumber,
        notAfter: x509.validTo,
      };
    });
    print(
      options.output,
      { tpm: tpmInfo, pcrBanks: banks, endorsementKeys: eks, ekCertificates: certificates },
      [
        `TPM:            ${tpmInfo.manufacturer} "${tpmInfo.vendor}", TPM ${tpmInfo.specFamily} revision ${tpmInfo.specRevision}`,
        `firmware:       ${tpmInfo.firmwareVersion}`,
        `PCR banks:      ${banks.map((b) => `${b.bank} (${b.pcrs === 0 ? 'inactive' : `${b.pcrs} PCRs`})`).join(', ')}`,
        'persistent EKs:',
        ...(eks.length === 0 ? ['  none'] : eks.map((e) => `  ${e.kind} at ${e.handle}, name ${e.name}`)),
        'EK certificates:',
        ...(certificates.length === 0
          ? ['  none']
          : certificates.map(
              (c) =>
                `  ${c.index} (${c.kind}): subject "${c.subject}", issuer "${c.issuer}", serial ${c.serial}`,
            )),
      ],
    );
  });
}

function sha256(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}

function banksJson(banks: readonly PcrBank[]) {
  return banks.map((b) => ({
    bank: algName(b.hash),
    values: Object.fromEntries([...b.values].map(([pcr, value]) => [String(pcr), hex(value)])),
  }));
}

function banksText(banks: readonly PcrBank[]): string[] {
  return banks.flatMap((b) => [
    `${algName(b.hash)}:`,
    ...[...b.values].map(([pcr, value]) => `  ${String(pcr).padStart(2)}: ${hex(value)}`),
  ]);
}

async function pcrs(options: CommonOptions & { bank: string }): Promise<void> {
  const hash = hashAlgByName(options.bank);
  await withTpm(options.tcti, async (tpm) => {
    const bank = (await tpm.getPcrBanks()).find((b) => b.hash === hash);
    if (!bank || bank.pcrs.length === 0) {
      const active = (await tpm.getPcrBanks()).filter((b) => b.pcrs.length > 0).map((b) => algName(b.hash));
      throw new InvalidArgumentError(
        `PCR bank ${options.bank} is not active on this TPM (active: ${active.join(', ')})`,
      );
    }
    const values = await readPcrs(tpm, [pcrSelection(hash, bank.pcrs)]);
    print(options.output, banksJson(values), banksText(values));
  });
}

/** Parses `sha256:0,1,7+sha1:0` into PCR selections. */
export function parsePcrSpec(spec: string): PcrSelection[] {
  return spec.split('+').map((part) => {
    const match = /^([a-z0-9]+):(\d+(?:,\d+)*)$/.exec(part.trim());
    if (!match?.[1] || !match[2]) {
      throw new InvalidArgumentError(`"${part}" is not a PCR selection like sha256:0,1,7`);
    }
    const indices = match[2].split(',').map(Number);
    const bad = indices.find((i) => i > 23);
    if (bad !== undefined) throw new InvalidArgumentError(`PCR ${bad} is out of range (0-23)`);
    return pcrSelection(hashAlgByName(match[1]), indices);
  });
}

function parseNonce(value: string): Uint8Array {
  if (!/^([0-9a-fA-F]{2}){1,64}$/.test(value)) {
    throw new InvalidArgumentError('the nonce must be 1 to 64 bytes of hex');
  }
  return new Uint8Array(Buffer.from(value, 'hex'));
}

async function quote(
  options: CommonOptions & {
    pcrs: PcrSelection[];
    nonce?: Uint8Array;
    ek: EkKind;
    ak: 'rsa2048' | 'ecc-p256';
  },
): Promise<void> {
  const nonce = options.nonce ?? new Uint8Array(randomBytes(32));
  await withTpm(options.tcti, async (tpm) => {
    const result = await withEk(tpm, options.ek, async (ek) => {
      const ak = await createAk(tpm, ek, options.ak);
      const q = await withAk(tpm, ek, ak, (loaded) => quotePcrs(tpm, loaded, nonce, options.pcrs));
      return { ak, q };
    });
    const { ak, q } = result;
    const pem = publicKeyFromArea(ak.public.area).export({ format: 'pem', type: 'spki' }).toString();
    const json = {
      nonce: hex(nonce),
      attest: hex(q.attestBytes),
      signature: hex(q.signatureBytes),
      signatureAlgorithm: `${algName(q.signature.sigAlg)}-${hashName(q.signature.hash)}`,
      pcrs: banksJson(q.pcrs),
      akPublic: hex(ak.publicBlob),
      akName: hex(objectName(ak.public)),
      akPem: pem,
      clock: {
        resetCount: q.attest.clockInfo.resetCount,
        restartCount: q.attest.clockInfo.restartCount,
        safe: q.attest.clockInfo.safe,
      },
    };
    print(options.output, json, [
      `nonce:      ${json.nonce}`,
      `attest:     ${json.attest}`,
      `signature:  ${json.signatureAlgorithm} ${json.signature}`,
      `AK public:  ${json.akPublic}`,
      `AK name:    ${json.akName}`,
      ...banksText(q.pcrs),
      pem.trimEnd(),
    ]);
  });
}

/** The `tpm` command group. */
export function tpmCommand(): Command {
  const tpm = new Command('tpm').description(
    'look at the node TPM as the agent sees it (through tpm2-tss TCTIs: device, swtpm, mssim, tabrmd)',
  );
  common(
    tpm.command('info').description('TPM vendor and firmware, active PCR banks, EKs and their certificates'),
  ).action((options: CommonOptions) => info(options));
  common(tpm.command('pcrs').description('read every PCR of one bank'))
    .option('--bank <hash>', 'PCR bank: sha1, sha256, sha384, sha512', 'sha256')
    .action((options: CommonOptions & { bank: string }) => pcrs(options));
  common(
    tpm
      .command('quote')
      .description(
        'quote PCRs with a fresh AK under the EK; prints attest, signature, PCR values, AK public',
      ),
  )
    .requiredOption(
      '--pcrs <selection>',
      'PCRs to quote, e.g. sha256:0,1,7 (banks joined with +)',
      parsePcrSpec,
    )
    .option('--nonce <hex>', 'qualifying data (default: 32 random bytes)', parseNonce)
    .addOption(
      new Option('--ek <kind>', 'EK to create the AK under')
        .choices(EK_PROFILES.map((p) => p.kind))
        .default('rsa2048'),
    )
    .addOption(
      new Option('--ak <algorithm>', 'AK algorithm').choices(['rsa2048', 'ecc-p256']).default('rsa2048'),
    )
    .action(
      (
        options: CommonOptions & {
          pcrs: PcrSelection[];
          nonce?: Uint8Array;
          ek: EkKind;
          ak: 'rsa2048' | 'ecc-p256';
        },
      ) => quote(options),
    );
  tpm.addCommand(eventlogCommand());
  return tpm;
}
