import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AdminClient } from '../../src/server/admin/client.js';
import { createCsr, createKeySigner, SpiffeId } from '../../src/spiffe/index.js';
import { newKeyPair } from '../../src/spiffe/new-key-pair.js';
import { type CliResult, cli, startTestServer, type TestServer } from '../helpers/server.js';

const TD = 'spiffe://example.org';
const RESERVED: readonly [string, string][] = [
  [`${TD}/agent/x`, 'agents named by attestation'],
  [`${TD}/ironroot/server`, 'the server itself'],
];
const reservedMessage = (id: string, owner: string) =>
  `spiffe_id "${id}" is reserved for ${owner}; choose a path outside /agent and /ironroot, e.g. spiffe://<trust domain>/node/web-1`;
/** A SPIFFE ID of exactly `bytes` bytes in example.org. */
const idOfLength = (bytes: number) => `${TD}/${'a'.repeat(bytes - TD.length - 1)}`;

type Results = { results: { status: { error_code: string; message: string } }[] };

describe('reserved and over-long SPIFFE IDs at the admin API, through the built CLI', () => {
  let server: TestServer;
  let client: AdminClient;
  const admin = () => ['--admin-socket', server.socket];
  /**
   * The entry's result and the error on standard error (JSON, as --output json asks), which for a
   * --data file is ERR_CLI_ENTRIES_REFUSED listing each refused entry by index and code.
   */
  const refusedEntry = (
    result: CliResult,
    code: string,
    message: string,
    error: { code: string; message: string } = { code, message },
  ) => {
    expect(result.code).toBe(1);
    expect((JSON.parse(result.stdout) as Results).results[0]?.status).toEqual({
      code: 3,
      error_code: code,
      message,
    });
    expect(result.stderr).toBe(`${JSON.stringify({ error })}\n`);
  };
  const entryCreate = (id: string) =>
    cli([
      'entry',
      'create',
      ...admin(),
      '--output',
      'json',
      '--spiffe-id',
      id,
      '--parent-id',
      `${TD}/agent/a`,
      '--selector',
      'unix:uid:1',
    ]);
  const csrFor = (id: string) =>
    createCsr(
      { spiffeId: SpiffeId.parse(id) },
      createKeySigner(newKeyPair('ec', { namedCurve: 'P-256' }).privateKey),
    );

  beforeAll(async () => {
    server = await startTestServer();
    client = new AdminClient(server.socket);
  });
  afterAll(async () => {
    client.close();
    await server.stop();
  });

  it.each(RESERVED)('entry create refuses %s with ERR_SPIFFE_ID_RESERVED', async (id, owner) => {
    refusedEntry(await entryCreate(id), 'ERR_SPIFFE_ID_RESERVED', reservedMessage(id, owner));
  });

  it.each(RESERVED)(
    'entry create --node refuses %s as a node alias with ERR_SPIFFE_ID_RESERVED',
    async (id, owner) => {
      const result = await cli([
        'entry',
        'create',
        ...admin(),
        '--output',
        'json',
        '--node',
        '--spiffe-id',
        id,
        '--selector',
        'tpm:manufacturer:x',
      ]);
      refusedEntry(result, 'ERR_SPIFFE_ID_RESERVED', reservedMessage(id, owner));
    },
  );

  it.each(RESERVED)(
    'entry create --data refuses %s in a batch with ERR_SPIFFE_ID_RESERVED',
    async (id, owner) => {
      const file = join(server.dir, 'reserved-batch.json');
      writeFileSync(
        file,
        JSON.stringify([{ spiffe_id: id, parent_id: `${TD}/agent/a`, selectors: ['unix:uid:1'] }]),
      );
      refusedEntry(
        await cli(['entry', 'create', ...admin(), '--output', 'json', '--data', file]),
        'ERR_SPIFFE_ID_RESERVED',
        reservedMessage(id, owner),
        {
          code: 'ERR_CLI_ENTRIES_REFUSED',
          message: `1 of 1 entries failed:\n  entry 0: ERR_SPIFFE_ID_RESERVED: ${reservedMessage(id, owner)}`,
        },
      );
    },
  );

  it.each(RESERVED)(
    'entry update refuses moving an entry to %s with ERR_SPIFFE_ID_RESERVED',
    async (id, owner) => {
      const created = await entryCreate(`${TD}/to-move/${owner.length}`);
      expect(created.code).toBe(0);
      const entryId = (JSON.parse(created.stdout) as { results: { entry: { id: string } }[] }).results[0]
        ?.entry.id;
      const result = await cli([
        'entry',
        'update',
        ...admin(),
        '--output',
        'json',
        '--entry-id',
        entryId ?? '',
        '--spiffe-id',
        id,
      ]);
      refusedEntry(result, 'ERR_SPIFFE_ID_RESERVED', reservedMessage(id, owner));
    },
  );

  it.each(RESERVED)('x509 mint refuses %s with ERR_SPIFFE_ID_RESERVED', async (id, owner) => {
    const result = await cli(['x509', 'mint', ...admin(), '--spiffe-id', id]);
    expect(result).toEqual({
      code: 1,
      stdout: '',
      stderr: `Error (ERR_SPIFFE_ID_RESERVED): ${reservedMessage(id, owner)}\n`,
    });
    // The code the CLI prints is the one the admin API call answers.
    await expect(client.call('SvidService', 'MintX509Svid', { csr: await csrFor(id) })).rejects.toMatchObject(
      {
        errorCode: 'ERR_SPIFFE_ID_RESERVED',
        message: reservedMessage(id, owner),
      },
    );
  });

  it.each(RESERVED)('jwt mint refuses %s with ERR_SPIFFE_ID_RESERVED', async (id, owner) => {
    const result = await cli(['jwt', 'mint', ...admin(), '--spiffe-id', id, '--audience', 'a']);
    expect(result).toEqual({
      code: 1,
      stdout: '',
      stderr: `Error (ERR_SPIFFE_ID_RESERVED): ${reservedMessage(id, owner)}\n`,
    });
    await expect(
      client.call('SvidService', 'MintJwtSvid', { spiffe_id: id, audience: ['a'] }),
    ).rejects.toMatchObject({ errorCode: 'ERR_SPIFFE_ID_RESERVED', message: reservedMessage(id, owner) });
  });

  const tooLong = idOfLength(2049);
  const tooLongMessage = `spiffe_id "${tooLong.slice(0, 200)}…" is not a valid SPIFFE ID (ERR_SPIFFEID_TOO_LONG): the CA signs no such ID: the SPIFFE ID is 2049 bytes; SPIFFE-ID §2.3 says not to produce IDs over 2048 bytes: shorten the path`;

  it('jwt mint refuses a 2049-byte SPIFFE ID with ERR_SPIFFEID_TOO_LONG, not an internal error', async () => {
    const result = await cli(['jwt', 'mint', ...admin(), '--spiffe-id', tooLong, '--audience', 'a']);
    expect(result).toEqual({
      code: 1,
      stdout: '',
      stderr: `Error (ERR_SPIFFE_ID_INVALID): ${tooLongMessage}\n`,
    });
    await expect(
      client.call('SvidService', 'MintJwtSvid', { spiffe_id: tooLong, audience: ['a'] }),
    ).rejects.toMatchObject({ errorCode: 'ERR_SPIFFE_ID_INVALID', message: tooLongMessage });
    expect(server.log()).not.toContain('admin API call failed unexpectedly');
  });

  it('entry create refuses a 2049-byte SPIFFE ID with ERR_SPIFFEID_TOO_LONG and keeps a 2048-byte one', async () => {
    refusedEntry(await entryCreate(tooLong), 'ERR_SPIFFE_ID_INVALID', tooLongMessage);
    const longest = await entryCreate(idOfLength(2048));
    expect(longest.stderr).toBe('');
    expect(longest.code).toBe(0);
  });
  it('agent show, agent ban and entry show refuse a 2049-byte SPIFFE ID with ERR_SPIFFEID_TOO_LONG, not "not found" or nothing', async () => {
    const lookup = (field: string) =>
      `${field} "${tooLong.slice(0, 200)}…" is not a valid SPIFFE ID (ERR_SPIFFEID_TOO_LONG): no stored ID is that long: the SPIFFE ID is 2049 bytes; SPIFFE-ID §2.3 says not to produce IDs over 2048 bytes: shorten the path`;
    for (const command of ['show', 'ban']) {
      const result = await cli(['agent', command, ...admin(), '--spiffe-id', tooLong]);
      expect(result, command).toEqual({
        code: 1,
        stdout: '',
        stderr: `Error (ERR_SPIFFE_ID_INVALID): ${lookup('spiffe_id')}\n`,
      });
    }
    await expect(client.call('AgentService', 'GetAgent', { spiffe_id: tooLong })).rejects.toMatchObject({
      errorCode: 'ERR_SPIFFE_ID_INVALID',
    });
    const shown = await cli(['entry', 'show', ...admin(), '--spiffe-id', tooLong]);
    expect(shown).toEqual({
      code: 1,
      stdout: '',
      stderr: `Error (ERR_SPIFFE_ID_INVALID): ${lookup('by_spiffe_id')}\n`,
    });
  });
});
