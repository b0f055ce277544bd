import type { ListProfilesResponse, NodeEventLogMessage, ProfileMessage } from '../admin/messages.js';
import type { Datastore } from '../datastore/datastore.js';
import { AgentNotFoundError, ServerError } from '../errors.js';
import type { MeasuredBootPolicy } from '../nodeattestor/policy.js';
import { profileYaml } from './load.js';

/** What `profile list|show` answer: the profiles the running server judges boots with. */
export class ProfileCatalog {
  readonly #policy: MeasuredBootPolicy | undefined;
  readonly #datastore: Datastore;

  /** `policy` is undefined when TPM attestation is off. */
  constructor(policy: MeasuredBootPolicy | undefined, datastore: Datastore) {
    this.#policy = policy;
    this.#datastore = datastore;
  }

  /** The last event log verified for a node: what `profile learn --from-node` learns from. */
  async nodeEventLog(spiffeId: string): Promise<NodeEventLogMessage> {
    const node = await this.#datastore.getNode(spiffeId, { eventLog: true });
    if (node === undefined) throw new AgentNotFoundError(spiffeId);
    const log = node.tpm?.eventLog;
    if (log === undefined || log.length === 0)
      throw new ServerError(
        'ERR_PROFILE_NO_EVENT_LOG',
        `the server keeps no event log for ${spiffeId} (${node.attestationType === 'tpm' ? 'its agent sent none' : `attested by ${node.attestationType}`}); learn from a log file with --eventlog`,
      );
    return { spiffe_id: spiffeId, event_log: Buffer.from(log) };
  }

  async list(): Promise<ListProfilesResponse> {
    const policy = this.#policy;
    if (policy?.mode !== 'profiles') return { mode: 'none', profiles: [] };
    return { mode: 'profiles', profiles: [...policy.profiles.keys()].map((name) => this.#message(name)) };
  }

  async get(name: string): Promise<ProfileMessage> {
    const policy = this.#policy;
    if (policy?.mode !== 'profiles' || !policy.profiles.has(name))
      throw new ServerError(
        'ERR_PROFILE_NOT_FOUND',
        policy?.mode === 'profiles'
          ? `no firmware profile named ${JSON.stringify(name)}; loaded: ${[...policy.profiles.keys()].join(', ')}`
          : 'this server uses no firmware profiles (measured_boot: none, or no tpm_attestation)',
      );
    return this.#message(name);
  }

  #message(name: string): ProfileMessage {
    const policy = this.#policy as Extract<MeasuredBootPolicy, { mode: 'profiles' }>;
    const loaded = policy.profiles.get(name);
    if (loaded === undefined)
      throw new ServerError('ERR_PROFILE_NOT_FOUND', `no firmware profile named ${name}`);
    const { profile, file } = loaded;
    return {
      name,
      file,
      pcrs: [...profile.pcrs],
      default: policy.defaults.includes(name),
      description: profile.description ?? '',
      yaml: profileYaml(profile, `Firmware profile ${name}, as loaded from ${file}.`),
    };
  }
}
