import { mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { validateConfig } from '../../src/server/config/load.js';
import { loadTpmPolicy, profilesFor } from '../../src/server/nodeattestor/policy.js';
import { loadProfileDir, loadProfileFile, profileYaml } from '../../src/server/profiles/load.js';
import { profileJsonSchema } from '../../src/server/profiles/schema.js';
import { learnProfile, parseEventLog, selfBootFacts } from '../../src/tpm/index.js';
import { repoRoot } from '../helpers/dist.js';
import { fixturePath } from '../helpers/fixtures.js';

const HEX = 'ab'.repeat(32);

function dir(): string {
  return mkdtempSync(join(tmpdir(), 'ironroot-profiles-'));
}

function write(directory: string, name: string, text: string): string {
  const file = join(directory, name);
  writeFileSync(file, text);
  return file;
}

function learnt(name: string): string {
  const log = parseEventLog(
    readFileSync(fixturePath('eventlogs', 'keylime', 'binary_bios_measurements-secureboot')),
  );
  return profileYaml(learnProfile(selfBootFacts(log), { name }), 'test profile');
}

describe('firmware profile files', () => {
  it('round-trip: a learnt profile written as YAML loads back to the same rules', () => {
    const d = dir();
    const log = parseEventLog(
      readFileSync(fixturePath('eventlogs', 'keylime', 'binary_bios_measurements-secureboot')),
    );
    const profile = learnProfile(selfBootFacts(log), { name: 'golden', description: 'a test' });
    const { profile: loaded } = loadProfileFile(write(d, 'golden.yaml', profileYaml(profile, 'x')));
    expect(loaded).toEqual(profile);
  });

  it.each([
    [
      'an unknown key',
      'name: p\npcrs: [0]\nfirmwre: {}\n',
      /firmwre: unknown key; allowed keys: name, description, bank, pcrs, firmware/,
    ],
    [
      'a digest that is not hex',
      `name: p\npcrs: [4]\nboot:\n  applications: [xyz]\n`,
      /boot\.applications\[0\]: got "xyz"; allowed: a lowercase hex digest/,
    ],
    [
      'a rule whose PCR is not listed',
      `name: p\npcrs: [0]\nboot:\n  applications: ["${HEX}"]\n`,
      /boot\.applications: got \[.*\]; allowed: only with PCR 4 in pcrs/,
    ],
    [
      'a pattern that does not compile',
      'name: p\npcrs: [8]\nboot:\n  kernel_cmdline: [{pattern: "("}]\n',
      /boot\.kernel_cmdline\[0\]\.pattern: got "\("; allowed: a JavaScript regular expression/,
    ],
    [
      'a text rule with neither exact nor pattern',
      'name: p\npcrs: [8]\nboot:\n  kernel_cmdline: [{prefix: "x"}]\n',
      /boot\.kernel_cmdline\[0\]/,
    ],
    [
      'a bad Secure Boot entry id',
      'name: p\npcrs: [7]\nsecure_boot:\n  db: ["x509:12"]\n',
      /secure_boot\.db\[0\]: got "x509:12"; allowed: x509:<sha256/,
    ],
    [
      'other_events for a PCR not listed',
      `name: p\npcrs: [0]\nother_events:\n  "5": ["${HEX}"]\n`,
      /other_events\.5: .*allowed: only PCRs listed in pcrs; add 5 to pcrs/,
    ],
    ['a PCR twice', 'name: p\npcrs: [0, 0]\n', /pcrs: got \[0,0\]; allowed: each PCR once/],
    ['no pcrs', 'name: p\n', /pcrs: missing; allowed: a array/],
    ['invalid YAML', 'name: [p\n', /is not valid YAML/],
  ])('refuses %s, naming the file and the key', (_what, text, message) => {
    const file = write(dir(), 'p.yaml', text);
    expect(() => loadProfileFile(file)).toThrow(expect.objectContaining({ code: 'ERR_PROFILE_INVALID' }));
    expect(() => loadProfileFile(file)).toThrow(message);
    expect(() => loadProfileFile(file)).toThrow(file);
  });

  it('refuses a name that is not the file name', () => {
    const file = write(dir(), 'golden.yaml', 'name: other\npcrs: [0]\n');
    expect(() => loadProfileFile(file)).toThrow(
      /name: got "other"; allowed: the file name without \.yaml \("golden"\)/,
    );
  });

  it('loads a directory by name, and refuses it whole when one file is bad', () => {
    const d = dir();
    write(d, 'a.yaml', learnt('a'));
    write(d, 'b.yaml', learnt('b'));
    write(d, 'README.md', 'not a profile');
    expect([...loadProfileDir(d).keys()]).toEqual(['a', 'b']);
    write(d, 'c.yaml', 'name: c\n');
    expect(() => loadProfileDir(d)).toThrow(/c\.yaml/);
  });

  it('firmware-profiles/profile.schema.json is the schema the server validates with (regenerate: node scripts/profile-schema.mjs)', () => {
    const committed = JSON.parse(
      readFileSync(join(repoRoot, 'firmware-profiles', 'profile.schema.json'), 'utf8'),
    );
    expect(committed).toEqual(JSON.parse(JSON.stringify(profileJsonSchema())));
  });

  it('every shipped profile in firmware-profiles/ loads', () => {
    const shipped = join(repoRoot, 'firmware-profiles');
    const names = readdirSync(shipped).filter((n) => n.endsWith('.yaml'));
    expect(names.length).toBeGreaterThan(0);
    expect([...loadProfileDir(shipped).keys()].sort()).toEqual(
      names.map((n) => n.replace(/\.yaml$/, '')).sort(),
    );
  });
});

describe('tpm_attestation.measured_boot', () => {
  const base = { trust_domain: 'example.org' };

  it('must be said: a TPM policy without it refuses to load, naming the key and the choices', () => {
    expect(() => validateConfig({ ...base, tpm_attestation: { ek_trust: 'any' } }, 'test')).toThrow(
      /tpm_attestation\.measured_boot: missing; allowed: none \(no measured-boot policy: say so explicitly\), or a mapping with profiles_dir, profiles and optional rules/,
    );
  });

  it('none is accepted and judges no profile', () => {
    const config = validateConfig(
      { ...base, tpm_attestation: { ek_trust: 'any', measured_boot: 'none' } },
      'test',
    );
    expect(config.tpm_attestation && loadTpmPolicy(config.tpm_attestation).measuredBoot).toEqual({
      mode: 'none',
    });
  });

  function policyWith(measuredBoot: unknown) {
    const config = validateConfig(
      { ...base, tpm_attestation: { ek_trust: 'any', measured_boot: measuredBoot } },
      'test',
    );
    if (config.tpm_attestation === undefined) throw new Error('no tpm_attestation');
    return loadTpmPolicy(config.tpm_attestation);
  }

  it('an unknown profile name refuses to start, naming the key and what the directory holds', () => {
    const d = dir();
    write(d, 'golden.yaml', learnt('golden'));
    expect(() => policyWith({ profiles_dir: d, profiles: ['goldn'] })).toThrow(
      expect.objectContaining({ code: 'ERR_CONFIG_UNSAFE' }),
    );
    expect(() => policyWith({ profiles_dir: d, profiles: ['goldn'] })).toThrow(
      `tpm_attestation.measured_boot.profiles: unknown firmware profile "goldn"; ${d} holds golden`,
    );
    expect(() =>
      policyWith({ profiles_dir: d, profiles: ['golden'], rules: [{ ek_hash: HEX, profiles: ['x'] }] }),
    ).toThrow(/tpm_attestation\.measured_boot\.rules\[0\]\.profiles: unknown firmware profile "x"/);
  });

  it('a rule must match on exactly one of ek_ca, ek_hash, selector', () => {
    expect(() =>
      policyWith({
        profiles_dir: '/x',
        profiles: ['a'],
        rules: [{ ek_hash: HEX, selector: 'tpm:model:x', profiles: ['a'] }],
      }),
    ).toThrow(/rules\[0\]: .*allowed: exactly one of ek_ca \(EK certificate issuer\), ek_hash, selector/);
  });

  it('an unreadable profiles_dir or a bad profile in it refuses to start', () => {
    expect(() => policyWith({ profiles_dir: '/nonexistent/profiles', profiles: ['a'] })).toThrow(
      /tpm_attestation\.measured_boot\.profiles_dir: cannot read the firmware profile directory \/nonexistent\/profiles/,
    );
    const d = dir();
    write(d, 'bad.yaml', 'name: bad\n');
    expect(() => policyWith({ profiles_dir: d, profiles: ['bad'] })).toThrow(/bad\.yaml:\n {2}pcrs: missing/);
  });

  it('the quoted selection grows to every PCR a profile needs, and profiles demand an event log', () => {
    const d = dir();
    write(d, 'golden.yaml', learnt('golden'));
    const policy = policyWith({ profiles_dir: d, profiles: ['golden'] });
    expect(policy.selection).toEqual([expect.objectContaining({ pcrs: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 14] })]);
    expect(policy.requireEventLog).toBe(true);
  });

  it('assigns by the first matching rule (EK issuer, EK hash, EK selector), else the default', () => {
    const d = dir();
    for (const n of ['a', 'b', 'c', 'd']) write(d, `${n}.yaml`, learnt(n));
    const policy = policyWith({
      profiles_dir: d,
      profiles: ['a'],
      rules: [
        { ek_ca: 'CN=vendor-ca', profiles: ['b'] },
        { ek_hash: HEX, profiles: ['c'] },
        { selector: 'tpm:model:swtpm', profiles: ['d', 'a'] },
      ],
    });
    if (policy.measuredBoot.mode !== 'profiles') throw new Error('expected profiles');
    const names = (subject: Parameters<typeof profilesFor>[1]) =>
      profilesFor(policy.measuredBoot as never, subject).map((p) => p.name);
    expect(names({ ekHash: '00', ekIssuer: 'CN=vendor-ca', selectors: [] })).toEqual(['b']);
    expect(names({ ekHash: HEX, ekIssuer: undefined, selectors: ['tpm:model:swtpm'] })).toEqual(['c']);
    expect(names({ ekHash: '00', ekIssuer: 'CN=other', selectors: ['tpm:model:swtpm'] })).toEqual(['d', 'a']);
    expect(names({ ekHash: '00', ekIssuer: undefined, selectors: [] })).toEqual(['a']);
  });
});
