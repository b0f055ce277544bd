import { describe, expect, it } from 'vitest';
import { ServerMetrics } from '../../src/server/metrics.js';
import { parseMetrics, sumOf } from '../helpers/metrics.js';

/** Keeps the event loop busy for `ms` (a stall, as a long synchronous handler would make). */
function stall(ms: number): void {
  const end = performance.now() + ms;
  while (performance.now() < end) {
    // busy on purpose
  }
}

describe('the server event-loop lag metrics', () => {
  it('still see a stall longer than their sampling interval', async () => {
    const metrics = new ServerMetrics();
    // Let the lag histogram take a few samples of an idle loop first.
    await new Promise((resolve) => setTimeout(resolve, 300));
    stall(600);
    // The sample due during the stall is taken once the loop is free again.
    await new Promise((resolve) => setTimeout(resolve, 300));
    const samples = parseMetrics(await metrics.registry.metrics());
    // The stall is 600 ms; the histogram samples every 100 ms, so at least 500 ms of it is seen (400: margin for timer rounding).
    expect(sumOf(samples, 'ironroot_nodejs_eventloop_lag_max_seconds')).toBeGreaterThanOrEqual(0.4);
    expect(samples.some((s) => s.name === 'ironroot_nodejs_eventloop_lag_p99_seconds')).toBe(true);
  });
});
