/**
 * A firmware profile: what a platform may have booted, stated as rules over bound boot facts
 * (eventlog/facts.ts). The YAML form and its schema live with the server, which loads profiles;
 * this is the checked, in-memory form.
 *
 * @module
 */

/** A text the boot must show: exactly this, or matching this anchored pattern. */
export type TextRule = { exact: string } | { pattern: string };

export interface SecureBootRules {
  /** Required state: true enabled, false disabled; absent, either. */
  enabled?: boolean;
  /** Entry ids (signature-list.ts) allowed in each variable; an entry not listed is a violation. */
  pk?: readonly string[];
  kek?: readonly string[];
  db?: readonly string[];
  /** Entry ids dbx must contain: a dbx missing any of them is stale. */
  dbxRequired?: readonly string[];
  /** Digests of the EV_EFI_VARIABLE_AUTHORITY events allowed in PCR 7 (which db entry verified each image). */
  authorities?: readonly string[];
}

export interface FirmwareProfile {
  name: string;
  description?: string;
  /** The PCR bank the digests below are in. */
  bank: string;
  /** PCRs the profile needs quoted; the verifier requests at least these. */
  pcrs: readonly number[];
  /** PCR 0. */
  firmware?: { crtmVersions?: readonly string[]; blobs?: readonly string[] };
  /** PCR 7. */
  secureBoot?: SecureBootRules;
  /** PCR 4: Authenticode digests of shim, grub, kernels started by firmware or shim. */
  bootApplications?: readonly string[];
  /** PCR 14: shim's MokList, MokListX, MokListTrusted measurements. */
  mok?: readonly string[];
  /** PCR 8: grub's `kernel_cmdline:` measurements; each must match one rule. */
  kernelCmdline?: readonly TextRule[];
  /** PCR 8: grub's `grub_cmd:` measurements; each must match one rule. */
  grubCommands?: readonly TextRule[];
  /** PCR 9: digests of files grub read (kernel, initrd, grub.cfg). */
  bootFiles?: readonly string[];
  /** Events the rules above do not cover, allowed by exact digest, per PCR. */
  otherEvents?: ReadonlyMap<number, readonly string[]>;
  /** Exact values a quoted PCR may have, for PCRs the log does not extend. */
  pcrValues?: ReadonlyMap<number, readonly string[]>;
}

/** Stable rule names: what a violation cites, and what docs/measured-boot.md explains. */
export type ProfileRule =
  | 'pcrs'
  | 'events.bound'
  | 'events.separator'
  | 'firmware.crtm_versions'
  | 'firmware.blobs'
  | 'secure_boot.enabled'
  | 'secure_boot.pk'
  | 'secure_boot.kek'
  | 'secure_boot.db'
  | 'secure_boot.dbx_required'
  | 'secure_boot.authorities'
  | 'boot.applications'
  | 'boot.mok'
  | 'boot.kernel_cmdline'
  | 'boot.grub_commands'
  | 'boot.files'
  | 'other_events'
  | 'pcr_values';

export interface Violation {
  rule: ProfileRule;
  pcr?: number;
  /** Index of the event in the log, when one event is to blame. */
  eventIndex?: number;
  expected: string;
  got: string;
}

/** The PCR each rule section speaks about. */
export const RULE_PCRS = {
  firmware: 0,
  bootApplications: 4,
  secureBoot: 7,
  kernelCmdline: 8,
  grubCommands: 8,
  bootFiles: 9,
  mok: 14,
} as const satisfies Partial<Record<keyof FirmwareProfile, number>>;
