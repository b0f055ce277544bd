/**
 * When to rotate, after SPIRE's CA manager (pkg/server/ca/manager): each authority has two slots;
 * the next key is prepared (and joins the bundle) once half the current one's lifetime is gone, at
 * most 30 days before it expires, and takes over signing when a sixth of its lifetime is left, at
 * most 7 days before expiry. Bundle entries go once they have been expired for a day.
 *
 * All times are Unix seconds; nothing here reads a clock.
 *
 * @module
 */

const DAY = 86400;
export const PREPARE_CAP = 30 * DAY;
export const ACTIVATE_CAP = 7 * DAY;
export const PRUNE_AFTER_EXPIRY = DAY;

export interface Validity {
  notBefore: number;
  notAfter: number;
}

/** The moment the successor of an authority with this validity should be prepared. */
export function preparationTime(v: Validity): number {
  return v.notAfter - Math.min(Math.floor((v.notAfter - v.notBefore) / 2), PREPARE_CAP);
}

/** The moment the prepared successor should take over signing. */
export function activationTime(v: Validity): number {
  return v.notAfter - Math.min(Math.floor((v.notAfter - v.notBefore) / 6), ACTIVATE_CAP);
}

export type RotationStep = 'prepare' | 'activate' | 'none';

/** What an authority should do now, given its active slot and whether a successor is prepared. */
export function rotationStep(active: Validity, hasPrepared: boolean, now: number): RotationStep {
  if (!hasPrepared) return now >= preparationTime(active) ? 'prepare' : 'none';
  return now >= activationTime(active) ? 'activate' : 'none';
}

/** Whether a bundle entry that expires at `notAfter` should have left the bundle by `now`. */
export function shouldPrune(notAfter: number, now: number): boolean {
  return now >= notAfter + PRUNE_AFTER_EXPIRY;
}
