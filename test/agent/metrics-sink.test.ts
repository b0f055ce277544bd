import { describe, expect, it } from 'vitest';
import { MetricsRelay, NO_METRICS } from '../../src/agent/metrics-sink.js';

describe('agent metrics when nobody serves them, and once they are served', () => {
  it('runs timed calls unchanged without metrics: their result, and their failure', async () => {
    await expect(NO_METRICS.timeIssue('x509', async () => 42)).resolves.toBe(42);
    await expect(
      NO_METRICS.timeIssue('jwt', async () => {
        throw new Error('server away');
      }),
    ).rejects.toThrow('server away');
    expect(() => NO_METRICS.syncStarted()()).not.toThrow();
  });

  it('drops reports until pointed at prom-client, then forwards every one of them', async () => {
    const relay = new MetricsRelay();
    relay.rotated('agent');
    relay.caChecked(5);
    await expect(relay.timeIssue('x509', async () => 'issued')).resolves.toBe('issued');

    // Loaded as the agent loads it: only when metrics_address is set.
    const { AgentMetrics } = await import('../../src/agent/metrics.js');
    const metrics = new AgentMetrics({
      soonestExpiryMs: () => undefined,
      entryCount: () => 3,
      refusedFederatedBundles: () => 1,
    });
    relay.target = metrics;
    relay.rotated('agent');
    relay.rotated('x509');
    relay.caChecked(2);
    relay.notComputed('unix:sha256');
    relay.lookup('hit');
    relay.syncFailed('ERR_AGENT_SERVER_UNAVAILABLE');
    relay.serverChanged('ERR_AGENT_SERVER_UNAVAILABLE');
    relay.syncStarted()();
    await expect(relay.timeIssue('x509', async () => 'issued')).resolves.toBe('issued');

    const text = await metrics.registry.metrics();
    expect(text).toContain('ironroot_agent_svid_rotations_total{kind="agent"} 1');
    expect(text).toContain('ironroot_agent_svid_rotations_total{kind="x509"} 1');
    expect(text).toContain('ironroot_agent_svid_ca_checks_total 2');
    expect(text).toContain('ironroot_agent_cache_lookups_total{result="hit"} 1');
    expect(text).toContain('ironroot_agent_workload_selectors_not_computed_total{kind="unix:sha256"} 1');
    expect(text).toContain('ironroot_agent_sync_failures_total{code="ERR_AGENT_SERVER_UNAVAILABLE"} 1');
    expect(text).toContain('ironroot_agent_server_changes_total{reason="ERR_AGENT_SERVER_UNAVAILABLE"} 1');
    expect(text).toContain('ironroot_agent_federated_bundles_refused 1');
    expect(text).toContain('ironroot_agent_sync_duration_seconds_count 1');
    expect(text).toContain('ironroot_agent_svid_renewal_duration_seconds_count{kind="x509"} 1');
  });
});
