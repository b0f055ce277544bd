// Writes firmware-profiles/profile.schema.json from the schema the server validates profiles with.
// Run after a build: `npm run build && node scripts/profile-schema.mjs`. A test checks it is current.
import { writeFileSync } from 'node:fs';
import { profileJsonSchema } from '../dist/server/profiles/schema.js';

const target = new URL('../firmware-profiles/profile.schema.json', import.meta.url);
writeFileSync(target, `${JSON.stringify(profileJsonSchema(), null, 2)}\n`);
process.stdout.write(`wrote ${target.pathname}\n`);
