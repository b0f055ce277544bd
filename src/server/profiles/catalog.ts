import type { ListProfilesResponse, ProfileMessage } from '../admin/messages.js';
import { ServerError } from '../errors.js';
import type { MeasuredBootPolicy } from '../nodeattestor/policy.js';
import { profileYaml } from './load.js';

/** What `profile list|show` answer: the profiles the running server judges boots with. */
export class ProfileCatalog {
  readonly #policy: MeasuredBootPolicy | undefined;

  /** `policy` is undefined when TPM attestation is off. */
  constructor(policy: MeasuredBootPolicy | undefined) {
    this.#policy = policy;
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
