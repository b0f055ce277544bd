import { describe, expect, it } from 'vitest';
import { MAX_TRACKED, RateLimiter } from '../../src/server/agentapi/ratelimit.js';

/** A clock that moves only when the test says. */
function stoppedClock(): { now(): number; advance(ms: number): void } {
  let t = 1_700_000_000_000;
  return { now: () => t, advance: (ms) => (t += ms) };
}

/** Spends `address`'s whole burst. */
function exhaust(limiter: RateLimiter, address: string, burst: number): void {
  for (let i = 0; i < burst; i++) expect(limiter.take(address)).toBe(true);
  expect(limiter.take(address)).toBe(false);
}

describe('attestation rate limiter', () => {
  it('keeps a limited address limited when the table fills with other addresses', () => {
    const clock = stoppedClock();
    const limiter = new RateLimiter(1, 2, clock);
    exhaust(limiter, '192.0.2.1', 2);
    for (let i = 0; i < MAX_TRACKED + 10; i++) limiter.take(`10.${i >> 16}.${(i >> 8) & 255}.${i & 255}`);
    expect(limiter.take('192.0.2.1')).toBe(false);
  });

  it('makes room by forgetting addresses whose buckets refilled: a newcomer then gets a bucket of its own', () => {
    const clock = stoppedClock();
    const limiter = new RateLimiter(1, 2, clock);
    for (let i = 0; i < MAX_TRACKED; i++) limiter.take(`10.0.${i >> 8}.${i & 255}`);
    clock.advance(2_000);
    exhaust(limiter, '192.0.2.1', 2);
    exhaust(limiter, '192.0.2.2', 2);
  });

  it('has newcomers share one bucket while every tracked address still owes tokens', () => {
    const clock = stoppedClock();
    const limiter = new RateLimiter(1, 2, clock);
    for (let i = 0; i < MAX_TRACKED; i++) limiter.take(`10.0.${i >> 8}.${i & 255}`);
    exhaust(limiter, '192.0.2.1', 2);
    expect(limiter.take('192.0.2.2')).toBe(false);
  });
});
