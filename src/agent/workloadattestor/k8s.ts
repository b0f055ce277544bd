/**
 * The `k8s` workload attestor: which pod and container a process runs in. The container ID comes
 * from the process's cgroup (the kernel's word); everything else from the kubelet's `/pods`
 * endpoint on this node, matched by that ID. Nothing the workload says is used.
 *
 * @module
 */
import { readFile } from 'node:fs/promises';
import { request } from 'node:https';
import type { Selector } from '../../workload-api/provider.js';
import type { WorkloadAttestor } from './attestor.js';
import { type CgroupEntry, readCgroups } from './cgroup.js';

/** Options of {@link K8sAttestor}. */
export interface K8sAttestorOptions {
  /** Where /proc is; default `/proc`. */
  procRoot?: string;
  /** The kubelet's secure port; default `https://127.0.0.1:10250`. */
  kubeletUrl?: string;
  /** CA certificate (PEM) the kubelet's serving certificate chains to. */
  kubeletCaPath?: string;
  /**
   * Accept any kubelet certificate. Kubelets commonly serve a self-signed certificate; this trades
   * server authentication for working out of the box. Prefer `kubeletCaPath`.
   */
  skipKubeletVerification?: boolean;
  /** Bearer token for the kubelet, read on every request (projected tokens rotate). */
  tokenPath?: string;
}

const DEFAULT_TOKEN_PATH = '/var/run/secrets/kubernetes.io/serviceaccount/token';

/**
 * Container runtimes name a container's cgroup after its 64-hex ID: bare under the cgroupfs driver
 * (`…/pod<uid>/<id>`), or as a scope under the systemd driver (`docker-<id>.scope`,
 * `cri-containerd-<id>.scope`, `crio-<id>.scope`). CRI-O's `crio-conmon-<id>.scope` is the
 * monitor process, not the container.
 */
const CONTAINER = /^(?:docker-|cri-containerd-|crio-)?([0-9a-f]{64})(?:\.scope)?$/;
/** `pod<uid>` (cgroupfs) or `kubepods-<qos>-pod<uid with _>.slice` (systemd). */
const POD = /pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})(?:\.slice)?$/;

/** A node running inside a container (kind): its pods sit below `/docker/<id>/`. */
const NODE_CONTAINER = /^[0-9a-f]{64}$/;

/**
 * The path components below the kubelet's pod hierarchy, or undefined when the path is not in it.
 * The hierarchy must start at the top of the path (after the `..` components a cgroup namespace
 * shows for cgroups outside it, or below a containerised node's `/docker/<id>`): anywhere deeper is
 * a sub-cgroup someone created, and a user with a delegated subtree could name one `kubepods/…`.
 */
function podHierarchy(path: string): string[] | undefined {
  const parts = path.split('/').filter((p) => p !== '');
  while (parts[0] === '..') parts.shift();
  if (parts[0] === 'docker' && NODE_CONTAINER.test(parts[1] ?? '')) parts.splice(0, 2);
  return parts[0]?.startsWith('kubepods') === true ? parts : undefined;
}

/** Container ID and pod UID of a process in a Kubernetes pod, from its cgroups; undefined when in none. */
export function podContainerOfCgroups(
  entries: readonly CgroupEntry[],
): { containerId: string; podUid?: string } | undefined {
  // Nested runtimes (kind) put the host's own cgroup on the v2 line and the pod's on v1 lines, so
  // every line is examined.
  for (const { path } of entries) {
    const parts = podHierarchy(path);
    if (parts === undefined) continue;
    const containerId = CONTAINER.exec(parts.at(-1) ?? '')?.[1];
    if (containerId === undefined) continue;
    const podUid = parts
      .map((p) => POD.exec(p)?.[1])
      .filter((u): u is string => u !== undefined)
      .at(-1)
      ?.replaceAll('_', '-');
    return podUid === undefined ? { containerId } : { containerId, podUid };
  }
  return undefined;
}

/** The parts of a kubelet PodList this attestor reads. */
interface Pod {
  metadata?: { name?: string; namespace?: string; uid?: string; labels?: Record<string, string> };
  spec?: {
    serviceAccountName?: string;
    nodeName?: string;
    containers?: ContainerSpec[];
    initContainers?: ContainerSpec[];
  };
  status?: {
    containerStatuses?: ContainerStatus[];
    initContainerStatuses?: ContainerStatus[];
    ephemeralContainerStatuses?: ContainerStatus[];
  };
}
interface ContainerSpec {
  name?: string;
  image?: string;
}
interface ContainerStatus {
  name?: string;
  containerID?: string;
  image?: string;
  imageID?: string;
}

/** Selectors of the container `containerId` found in `pods`, or undefined when no pod runs it. */
export function selectorsOfPod(
  pods: readonly Pod[],
  containerId: string,
  podUid?: string,
): Selector[] | undefined {
  for (const pod of pods) {
    if (podUid !== undefined && pod.metadata?.uid !== podUid) continue;
    const statuses = [
      ...(pod.status?.containerStatuses ?? []),
      ...(pod.status?.initContainerStatuses ?? []),
      ...(pod.status?.ephemeralContainerStatuses ?? []),
    ];
    // containerID is `<runtime>://<id>`.
    const status = statuses.find(
      (s) => s.containerID?.slice(s.containerID.indexOf('://') + 3) === containerId,
    );
    if (status === undefined) continue;
    const { metadata = {}, spec = {} } = pod;
    const specImage = [...(spec.containers ?? []), ...(spec.initContainers ?? [])].find(
      (c) => c.name === status.name,
    )?.image;
    const selectors: Selector[] = [];
    const add = (name: string, value: string | undefined) => {
      if (value !== undefined && value !== '') selectors.push(`k8s:${name}:${value}`);
    };
    add('ns', metadata.namespace);
    add('sa', spec.serviceAccountName);
    add('pod-name', metadata.name);
    add('pod-uid', metadata.uid);
    add('node-name', spec.nodeName);
    add('container-name', status.name);
    // The image as the pod asked for it, as the runtime resolved it, and by digest.
    for (const image of new Set([specImage, status.image, status.imageID])) add('container-image', image);
    for (const [key, value] of Object.entries(metadata.labels ?? {})) add('pod-label', `${key}:${value}`);
    return selectors;
  }
  return undefined;
}

/**
 * Selectors `k8s:ns:…`, `k8s:sa:…`, `k8s:pod-name:…`, `k8s:pod-uid:…`, `k8s:node-name:…`,
 * `k8s:container-name:…`, `k8s:container-image:…`, `k8s:pod-label:<key>:<value>`.
 */
export class K8sAttestor implements WorkloadAttestor {
  readonly type = 'k8s';
  readonly #procRoot: string;
  readonly #url: URL;
  readonly #caPath: string | undefined;
  readonly #skipVerify: boolean;
  readonly #tokenPath: string;

  constructor(options: K8sAttestorOptions = {}) {
    this.#procRoot = options.procRoot ?? '/proc';
    this.#url = new URL('/pods', options.kubeletUrl ?? 'https://127.0.0.1:10250');
    this.#caPath = options.kubeletCaPath;
    this.#skipVerify = options.skipKubeletVerification ?? false;
    this.#tokenPath = options.tokenPath ?? DEFAULT_TOKEN_PATH;
    if (this.#caPath === undefined && !this.#skipVerify) {
      throw new TypeError(
        'k8s attestor: set kubeletCaPath, or skipKubeletVerification to accept any kubelet certificate',
      );
    }
  }

  async attest(pid: number): Promise<Selector[]> {
    const found = podContainerOfCgroups(readCgroups(this.#procRoot, pid));
    if (found === undefined) return [];
    const pods = await this.#pods();
    const selectors = selectorsOfPod(pods, found.containerId, found.podUid);
    if (selectors === undefined) {
      // A container the kubelet does not (yet) list cannot be described; refusing beats guessing.
      throw new Error(
        `container ${found.containerId} is not in the kubelet's pod list; retry once the pod is running`,
      );
    }
    return selectors;
  }

  async #pods(): Promise<Pod[]> {
    const token = (await readFile(this.#tokenPath, 'utf8')).trim();
    const ca = this.#caPath === undefined ? undefined : await readFile(this.#caPath);
    const body = await new Promise<string>((resolve, reject) => {
      const req = request(
        this.#url,
        {
          method: 'GET',
          headers: { authorization: `Bearer ${token}`, accept: 'application/json' },
          ...(ca === undefined ? {} : { ca }),
          rejectUnauthorized: !this.#skipVerify,
          timeout: 10_000,
        },
        (res) => {
          let text = '';
          res.setEncoding('utf8');
          res.on('data', (chunk: string) => {
            text += chunk;
          });
          res.on('end', () => {
            if (res.statusCode === 200) resolve(text);
            else
              reject(
                new Error(
                  `kubelet ${this.#url} answered HTTP ${res.statusCode}; check the token's RBAC (nodes/proxy)`,
                ),
              );
          });
        },
      );
      req.on('timeout', () => req.destroy(new Error(`kubelet ${this.#url} did not answer within 10 s`)));
      req.on('error', reject);
      req.end();
    });
    const list: unknown = JSON.parse(body);
    const items = typeof list === 'object' && list !== null ? (list as { items?: unknown }).items : undefined;
    if (!Array.isArray(items)) throw new Error(`kubelet ${this.#url} did not return a PodList`);
    return items as Pod[];
  }
}
