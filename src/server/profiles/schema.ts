/**
 * The YAML form of a firmware profile (docs/measured-boot.md). `firmware-profiles/profile.schema.json`
 * is generated from this schema, so editors and CI can check profiles the way the server does.
 *
 * @module
 */
import { z } from 'zod';

const PCR_KEY = /^(?:[0-9]|1[0-9]|2[0-3])$/;
const hexDigest = z
  .string()
  .regex(/^(?:[0-9a-f]{40}|[0-9a-f]{64}|[0-9a-f]{96}|[0-9a-f]{128})$/, 'allowed: a lowercase hex digest');
const digests = z.array(hexDigest);
const entryId = z
  .string()
  .regex(
    /^(?:x509|sha256|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}):[0-9a-f]{64}$/,
    'allowed: x509:<sha256 of the certificate>, sha256:<hash>, or <signature type GUID>:<sha256 of the data>',
  );
const pattern = z.string().refine((p) => {
  try {
    new RegExp(p, 'u');
    return true;
  } catch {
    return false;
  }
}, 'allowed: a JavaScript regular expression (anchored at both ends by ironroot)');
const textRule = z.union([z.strictObject({ exact: z.string() }), z.strictObject({ pattern })], {
  error: 'allowed: {exact: "text"} or {pattern: "regular expression"}',
});
const perPcr = z.record(z.string().regex(PCR_KEY, 'allowed: a PCR number 0..23'), digests);

/** Which PCR each section speaks about: a section needs its PCR in `pcrs`. */
const SECTION_PCRS: readonly [path: readonly string[], pcr: number][] = [
  [['firmware'], 0],
  [['secure_boot'], 7],
  [['boot', 'applications'], 4],
  [['boot', 'kernel_cmdline'], 8],
  [['boot', 'grub_commands'], 8],
  [['boot', 'files'], 9],
  [['boot', 'mok'], 14],
];

export const profileSchema = z
  .strictObject({
    name: z
      .string()
      .regex(
        /^[a-z0-9][a-z0-9._-]{0,62}$/,
        'allowed: lowercase letters, digits, ".", "_" and "-" (at most 63)',
      ),
    description: z.string().optional(),
    bank: z.enum(['sha1', 'sha256', 'sha384', 'sha512']).default('sha256'),
    pcrs: z
      .array(z.number().int().min(0).max(23))
      .min(1)
      .refine((list) => new Set(list).size === list.length, 'allowed: each PCR once'),
    firmware: z
      .strictObject({ crtm_versions: z.array(z.string()).optional(), blobs: digests.optional() })
      .optional(),
    secure_boot: z
      .strictObject({
        enabled: z.boolean().optional(),
        pk: z.array(entryId).optional(),
        kek: z.array(entryId).optional(),
        db: z.array(entryId).optional(),
        dbx_required: z.array(entryId).optional(),
        authorities: digests.optional(),
      })
      .optional(),
    boot: z
      .strictObject({
        applications: digests.optional(),
        mok: digests.optional(),
        kernel_cmdline: z.array(textRule).optional(),
        grub_commands: z.array(textRule).optional(),
        files: digests.optional(),
      })
      .optional(),
    other_events: perPcr.optional(),
    pcr_values: perPcr.optional(),
  })
  .superRefine((profile, ctx) => {
    const listed = new Set(profile.pcrs);
    for (const [path, pcr] of SECTION_PCRS) {
      const value = path.reduce<unknown>(
        (node, key) => (node as Record<string, unknown> | undefined)?.[key],
        profile,
      );
      if (value !== undefined && !listed.has(pcr))
        ctx.addIssue({
          code: 'custom',
          path: [...path],
          message: `allowed: only with PCR ${pcr} in pcrs (this rule checks PCR ${pcr}); add ${pcr} to pcrs`,
        });
    }
    for (const key of ['other_events', 'pcr_values'] as const)
      for (const pcr of Object.keys(profile[key] ?? {}))
        if (!listed.has(Number(pcr)))
          ctx.addIssue({
            code: 'custom',
            path: [key, pcr],
            message: `allowed: only PCRs listed in pcrs; add ${pcr} to pcrs`,
          });
  });

export type ProfileDocument = z.input<typeof profileSchema>;

/** The JSON schema that `firmware-profiles/profile.schema.json` holds. */
export function profileJsonSchema(): Record<string, unknown> {
  return {
    ...z.toJSONSchema(profileSchema, { io: 'input', unrepresentable: 'any' }),
    title: 'ironroot firmware profile',
  };
}
