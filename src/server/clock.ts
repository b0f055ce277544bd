/** Time source for everything that decides by the clock (expiry, rotation), so tests can drive it. */
export interface Clock {
  /** Milliseconds since the Unix epoch. */
  now(): number;
}

export const systemClock: Clock = { now: () => Date.now() };

/** Whole seconds since the epoch: what the datastore stores. */
export function nowSeconds(clock: Clock): number {
  return Math.floor(clock.now() / 1000);
}
