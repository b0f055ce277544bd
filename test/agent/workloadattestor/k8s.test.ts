import { createHash } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseCgroups } from '../../../src/agent/workloadattestor/cgroup.js';
import { K8sAttestor, podContainerOfCgroups } from '../../../src/agent/workloadattestor/k8s.js';
import { KUBELET_TOKEN, type ReplayKubelet, startReplayKubelet } from '../../helpers/kubelet.js';
import { opensslCert } from '../../helpers/x509.js';

/** The fixture's container IDs are SHA-256 of the container name. */
const id = (name: string) => createHash('sha256').update(name).digest('hex');
const WEB_POD = '5f0b3c2e-8d1a-4e6b-9c7f-2a4d6e8f0b1c';
const PAY_POD = 'c3a1e9d7-2b4f-4a6c-8e0d-1f3b5d7a9c2e';

/** cgroup files in the formats real nodes produce, by fake pid. */
const CGROUPS: Record<number, string> = {
  // cgroup v2, systemd cgroup driver, containerd.
  101: `0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod${WEB_POD.replaceAll('-', '_')}.slice/cri-containerd-${id('web')}.scope\n`,
  // cgroup v1, systemd driver, CRI-O; the v2 line names the runtime's own service.
  102: [
    `12:hugetlb:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod${PAY_POD.replaceAll('-', '_')}.slice/crio-${id('payments')}.scope`,
    `7:memory:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod${PAY_POD.replaceAll('-', '_')}.slice/crio-${id('payments')}.scope`,
    '3:rdma:/',
    `1:name=systemd:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod${PAY_POD.replaceAll('-', '_')}.slice/crio-${id('payments')}.scope`,
    '0::/system.slice/crio.service',
    '',
  ].join('\n'),
  // cgroup v1, cgroupfs driver, nested in a kind node container.
  103: [
    `13:name=systemd:/docker/93d1c2b4a5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f80/kubepods/burstable/pod${WEB_POD}/${id('log-shipper')}`,
    `5:memory:/docker/93d1c2b4a5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f80/kubepods/burstable/pod${WEB_POD}/${id('log-shipper')}`,
    '0::/docker/93d1c2b4a5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f80/system.slice/containerd.service',
    '',
  ].join('\n'),
  // A host service, in no pod.
  104: '0::/system.slice/sshd.service\n',
  // A container the kubelet does not list.
  105: `0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod${WEB_POD.replaceAll('-', '_')}.slice/cri-containerd-${id('gone')}.scope\n`,
  // CRI-O's conmon monitor process: not a container.
  106: `0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod${PAY_POD.replaceAll('-', '_')}.slice/crio-conmon-${id('payments')}.scope\n`,
};

describe('k8s workload attestor against a replayed kubelet /pods', () => {
  let dir: string;
  let kubelet: ReplayKubelet;

  const attestor = (overrides: Partial<ConstructorParameters<typeof K8sAttestor>[0]> = {}) =>
    new K8sAttestor({
      procRoot: join(dir, 'proc'),
      kubeletUrl: kubelet.url,
      kubeletCaPath: join(dir, 'kubelet.crt'),
      tokenPath: join(dir, 'token'),
      ...overrides,
    });

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'k8s-attestor-'));
    kubelet = await startReplayKubelet(dir);
    await opensslCert({ cert: join(dir, 'other.crt'), key: join(dir, 'other.key'), subject: '/CN=other' });
    for (const [pid, text] of Object.entries(CGROUPS)) {
      mkdirSync(join(dir, 'proc', pid), { recursive: true });
      writeFileSync(join(dir, 'proc', pid, 'cgroup'), text);
    }
  });

  afterAll(async () => {
    await kubelet.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('describes a containerd container under cgroup v2 with every pod selector', async () => {
    expect(await attestor().attest(101)).toEqual([
      'k8s:ns:shop',
      'k8s:sa:web',
      'k8s:pod-name:web-7d9c6b5f4d-x2kqz',
      `k8s:pod-uid:${WEB_POD}`,
      'k8s:node-name:node-a.dc1.example.org',
      'k8s:container-name:web',
      'k8s:container-image:registry.example.org/shop/web:2.4.1',
      `k8s:container-image:registry.example.org/shop/web@sha256:${createHash('sha256').update('imgweb').digest('hex')}`,
      'k8s:pod-label:app.kubernetes.io/name:web',
      'k8s:pod-label:tier:frontend',
      'k8s:pod-label:pod-template-hash:7d9c6b5f4d',
    ]);
    expect(kubelet.seenAuth.at(-1)).toBe(`Bearer ${KUBELET_TOKEN}`);
  });

  it('describes a CRI-O container under cgroup v1 with the systemd driver', async () => {
    const selectors = await attestor().attest(102);
    expect(selectors).toContain('k8s:ns:payments');
    expect(selectors).toContain('k8s:sa:payments');
    expect(selectors).toContain('k8s:container-name:payments');
    expect(selectors).toContain(`k8s:pod-uid:${PAY_POD}`);
    expect(selectors).toContain('k8s:pod-label:statefulset.kubernetes.io/pod-name:payments-0');
  });

  it('finds the pod on v1 cgroupfs lines of a nested (kind) node, not the v2 line', async () => {
    const selectors = await attestor().attest(103);
    expect(selectors).toContain('k8s:container-name:log-shipper');
    expect(selectors).toContain('k8s:container-image:docker.io/fluent/fluent-bit:3.1');
    expect(selectors).toContain('k8s:pod-name:web-7d9c6b5f4d-x2kqz');
  });

  it('gives no selectors to a process outside any pod, or to CRI-O conmon', async () => {
    expect(await attestor().attest(104)).toEqual([]);
    expect(await attestor().attest(106)).toEqual([]);
  });

  it('refuses a container the kubelet does not list', async () => {
    await expect(attestor().attest(105)).rejects.toThrow(/not in the kubelet's pod list/);
  });

  it('refuses a kubelet whose certificate does not chain to the configured CA, unless told to skip', async () => {
    await expect(attestor({ kubeletCaPath: join(dir, 'other.crt') }).attest(101)).rejects.toThrow(
      /certificate/,
    );
    const skipping = attestor({ kubeletCaPath: undefined, skipKubeletVerification: true });
    expect(await skipping.attest(101)).toContain('k8s:container-name:web');
  });

  it('reports a rejected token', async () => {
    writeFileSync(join(dir, 'bad-token'), 'wrong');
    await expect(attestor({ tokenPath: join(dir, 'bad-token') }).attest(101)).rejects.toThrow(/HTTP 401/);
  });

  it('needs a CA or an explicit choice to skip verification', () => {
    expect(() => new K8sAttestor({ kubeletCaPath: undefined })).toThrow(TypeError);
  });
});

describe('podContainerOfCgroups', () => {
  it('reads cgroupfs docker paths and normalises systemd-style pod UIDs', () => {
    expect(podContainerOfCgroups(parseCgroups(CGROUPS[101] ?? ''))).toEqual({
      containerId: id('web'),
      podUid: WEB_POD,
    });
    expect(
      podContainerOfCgroups(
        parseCgroups(`4:cpu:/kubepods/besteffort/pod${PAY_POD}/docker-${id('x')}.scope\n`),
      ),
    ).toEqual({
      containerId: id('x'),
      podUid: PAY_POD,
    });
    expect(podContainerOfCgroups(parseCgroups(`0::/docker/${id('y')}\n`))).toBeUndefined();
  });

  it('reads paths relative to a cgroup namespace', () => {
    const line = `0::/../../kubepods-besteffort.slice/kubepods-besteffort-pod${PAY_POD.replaceAll('-', '_')}.slice/cri-containerd-${id('z')}.scope\n`;
    expect(podContainerOfCgroups(parseCgroups(line))).toEqual({ containerId: id('z'), podUid: PAY_POD });
  });

  it('ignores a kubepods-looking sub-cgroup below another cgroup (a delegated subtree)', () => {
    const spoof = `0::/user.slice/user-1000.slice/user@1000.service/kubepods/pod${WEB_POD}/${id('web')}\n`;
    expect(podContainerOfCgroups(parseCgroups(spoof))).toBeUndefined();
  });
});
