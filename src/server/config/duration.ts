const UNIT_SECONDS = { s: 1, m: 60, h: 3600, d: 86400 } as const;
const DURATION = /^([1-9][0-9]*)(s|m|h|d)$/;

/** Seconds in a duration written as `90s`, `30m`, `24h` or `7d`; undefined when it is not one. */
export function parseDuration(text: string): number | undefined {
  const match = DURATION.exec(text);
  if (!match) return undefined;
  const [, amount, unit] = match;
  if (amount === undefined || unit === undefined) return undefined;
  return Number(amount) * UNIT_SECONDS[unit as keyof typeof UNIT_SECONDS];
}

export const DURATION_HINT = 'a duration such as 90s, 30m, 24h or 7d';
