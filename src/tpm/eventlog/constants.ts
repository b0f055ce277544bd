import { getHashes } from 'node:crypto';

/**
 * Numbers from the TCG PC Client Platform Firmware Profile (event types, §10.4.1) and the TCG
 * Algorithm Registry (hash algorithm ids and digest sizes).
 */

export const EV = {
  PREBOOT_CERT: 0x0,
  POST_CODE: 0x1,
  UNUSED: 0x2,
  NO_ACTION: 0x3,
  SEPARATOR: 0x4,
  ACTION: 0x5,
  EVENT_TAG: 0x6,
  S_CRTM_CONTENTS: 0x7,
  S_CRTM_VERSION: 0x8,
  CPU_MICROCODE: 0x9,
  PLATFORM_CONFIG_FLAGS: 0xa,
  TABLE_OF_DEVICES: 0xb,
  COMPACT_HASH: 0xc,
  IPL: 0xd,
  IPL_PARTITION_DATA: 0xe,
  NONHOST_CODE: 0xf,
  NONHOST_CONFIG: 0x10,
  NONHOST_INFO: 0x11,
  OMIT_BOOT_DEVICE_EVENTS: 0x12,
  POST_CODE2: 0x13,
  EFI_VARIABLE_DRIVER_CONFIG: 0x80000001,
  EFI_VARIABLE_BOOT: 0x80000002,
  EFI_BOOT_SERVICES_APPLICATION: 0x80000003,
  EFI_BOOT_SERVICES_DRIVER: 0x80000004,
  EFI_RUNTIME_SERVICES_DRIVER: 0x80000005,
  EFI_GPT_EVENT: 0x80000006,
  EFI_ACTION: 0x80000007,
  EFI_PLATFORM_FIRMWARE_BLOB: 0x80000008,
  EFI_HANDOFF_TABLES: 0x80000009,
  EFI_PLATFORM_FIRMWARE_BLOB2: 0x8000000a,
  EFI_HANDOFF_TABLES2: 0x8000000b,
  EFI_VARIABLE_BOOT2: 0x8000000c,
  EFI_GPT_EVENT2: 0x8000000d,
  EFI_HCRTM_EVENT: 0x80000010,
  EFI_VARIABLE_AUTHORITY: 0x800000e0,
  EFI_SPDM_FIRMWARE_BLOB: 0x800000e1,
  EFI_SPDM_FIRMWARE_CONFIG: 0x800000e2,
} as const;

const EVENT_TYPE_NAMES: ReadonlyMap<number, string> = new Map(
  Object.entries(EV).map(([name, value]) => [value, `EV_${name}`]),
);

/** `EV_…` name of an event type, or its hex value when the type is not one the spec defines. */
export function eventTypeName(type: number): string {
  return EVENT_TYPE_NAMES.get(type) ?? `EV_UNKNOWN_0x${type.toString(16).padStart(8, '0')}`;
}

export interface HashAlgorithm {
  /** TPM_ALG_ID. */
  readonly id: number;
  /** Name as tpm2-tools prints it, and as banks are keyed throughout ironroot. */
  readonly name: string;
  readonly size: number;
  /** Name for node:crypto's createHash. */
  readonly nodeName: string;
}

export const HASH_ALGORITHMS: readonly HashAlgorithm[] = [
  { id: 0x0004, name: 'sha1', size: 20, nodeName: 'sha1' },
  { id: 0x000b, name: 'sha256', size: 32, nodeName: 'sha256' },
  { id: 0x000c, name: 'sha384', size: 48, nodeName: 'sha384' },
  { id: 0x000d, name: 'sha512', size: 64, nodeName: 'sha512' },
  { id: 0x0012, name: 'sm3_256', size: 32, nodeName: 'sm3' },
  { id: 0x0027, name: 'sha3_256', size: 32, nodeName: 'sha3-256' },
  { id: 0x0028, name: 'sha3_384', size: 48, nodeName: 'sha3-384' },
  { id: 0x0029, name: 'sha3_512', size: 64, nodeName: 'sha3-512' },
];

export const SHA1 = HASH_ALGORITHMS[0] as HashAlgorithm;

export function hashAlgorithmById(id: number): HashAlgorithm | undefined {
  return HASH_ALGORITHMS.find((alg) => alg.id === id);
}

/**
 * The algorithm of a bank, if this Node build can compute it (SM3 depends on how OpenSSL was
 * built): a bank ironroot cannot hash is a bank it cannot replay.
 */
export function hashAlgorithmByName(name: string): HashAlgorithm | undefined {
  const alg = HASH_ALGORITHMS.find((a) => a.name === name);
  return alg !== undefined && NODE_HASHES.has(alg.nodeName) ? alg : undefined;
}

const NODE_HASHES: ReadonlySet<string> = new Set(getHashes());

/** PCRs a PC Client TPM has; DRTM PCRs 17–22 start at all-ones, the rest at zero. */
export const PCR_COUNT = 24;
export const NO_PCR = 0xffffffff;

export function pcrInitialValue(pcr: number, size: number): Buffer {
  return Buffer.alloc(size, pcr >= 17 && pcr <= 22 ? 0xff : 0x00);
}
