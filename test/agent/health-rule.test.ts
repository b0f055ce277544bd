import { describe, expect, it } from 'vitest';
import { evaluateHealth } from '../../src/agent/health.js';

const NOW = 1_000_000;
const base = {
  now: NOW,
  agentSvidValid: true,
  lastSyncAt: NOW,
  syncIntervalSeconds: 5,
  served: [{ notBefore: NOW - 10, expiresAt: NOW + 90 }],
  unserved: 0,
  failing: false,
};

describe('the agent health rule', () => {
  it('is healthy with a valid SVID, a recent sync and SVIDs within 3/4 of their life', () => {
    expect(evaluateHealth(base)).toEqual({ healthy: true, unhealthy_reasons: [], soonest_expiry: NOW + 90 });
  });

  it('is unhealthy without a valid agent SVID', () => {
    expect(evaluateHealth({ ...base, agentSvidValid: false }).unhealthy_reasons).toEqual(['NO_AGENT_SVID']);
  });

  it('turns SYNC_STALE after max(3 × sync_interval, 60 s) without a successful sync, not before', () => {
    expect(evaluateHealth({ ...base, lastSyncAt: NOW - 60 }).healthy).toBe(true);
    expect(evaluateHealth({ ...base, lastSyncAt: NOW - 61 }).unhealthy_reasons).toEqual(['SYNC_STALE']);
    const slow = { ...base, syncIntervalSeconds: 30 };
    expect(evaluateHealth({ ...slow, lastSyncAt: NOW - 90 }).healthy).toBe(true);
    expect(evaluateHealth({ ...slow, lastSyncAt: NOW - 91 }).unhealthy_reasons).toEqual(['SYNC_STALE']);
  });

  it('turns SVID_RENEWAL_OVERDUE once a served SVID passes 3/4 of its lifetime', () => {
    const served = [{ notBefore: NOW - 74, expiresAt: NOW + 26 }];
    expect(evaluateHealth({ ...base, served }).healthy).toBe(true);
    const overdue = [{ notBefore: NOW - 75, expiresAt: NOW + 25 }];
    expect(evaluateHealth({ ...base, served: overdue }).unhealthy_reasons).toEqual(['SVID_RENEWAL_OVERDUE']);
  });

  it('turns SVID_MISSING for an entry without an SVID only while calls to the server fail', () => {
    expect(evaluateHealth({ ...base, unserved: 1 }).healthy).toBe(true);
    expect(evaluateHealth({ ...base, unserved: 1, failing: true }).unhealthy_reasons).toEqual([
      'SVID_MISSING',
    ]);
  });
});
