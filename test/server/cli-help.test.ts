import { describe, expect, it } from 'vitest';
import { cli } from '../helpers/server.js';

const COMMANDS = [
  'run',
  'validate',
  'healthcheck',
  'entry create',
  'entry show',
  'entry update',
  'entry delete',
  'entry count',
  'agent list',
  'agent show',
  'agent evict',
  'agent ban',
  'token generate',
  'localauthority x509 show',
  'localauthority x509 prepare',
  'localauthority x509 activate',
  'localauthority x509 taint',
  'localauthority jwt revoke',
  'bundle show',
  'bundle list',
  'bundle set',
  'bundle delete',
  'federation create',
  'federation list',
  'federation show',
  'federation update',
  'federation delete',
  'x509 mint',
  'jwt mint',
];

describe('every server command has --help', () => {
  it.each(COMMANDS)('%s --help', async (command) => {
    const result = await cli([...command.split(' '), '--help']);
    expect(result.code).toBe(0);
    expect(result.stdout).toContain(`Usage: ironroot-server ${command}`);
  });
});
