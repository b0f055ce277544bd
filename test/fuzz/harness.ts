/**
 * The fuzz oracle and input generators shared by the parser fuzz tests.
 *
 * Oracle: a parser given hostile bytes either returns or throws one of our coded errors
 * (SpiffeError, TpmError and its subclasses, EventLogError). Anything else (a TypeError, a
 * RangeError, a raw OpenSSL or ASN.1 error) is a defect: the caller would answer "internal error"
 * instead of naming what was wrong.
 *
 * Every target runs twice: once with a fixed seed (the same inputs on every run) and once with a
 * random seed that is printed, so a failure seen once can be replayed with
 * `FUZZ_SEED=<seed> npx vitest run test/fuzz`. Runs are counted, never timed.
 *
 * @module
 */
import { createHash, randomInt } from 'node:crypto';
import fc from 'fast-check';
import { beforeAll, describe, it } from 'vitest';
import { SpiffeError } from '../../src/spiffe/errors.js';
import { TpmError } from '../../src/tpm/errors.js';
import { EventLogError } from '../../src/tpm/eventlog/errors.js';

/** The seed every run starts with; changing it changes which inputs CI sees. */
export const FIXED_SEED = 0x1e0_2007;

/** The second seed: FUZZ_SEED when replaying a failure, else a fresh one. */
export const RANDOM_SEED =
  process.env.FUZZ_SEED === undefined ? randomInt(2 ** 31) : Number(process.env.FUZZ_SEED);

/** FUZZ_RUNS_SCALE multiplies every run count, for a deeper search by hand; CI keeps 1. */
const SCALE = Number(process.env.FUZZ_RUNS_SCALE ?? 1);

/** True for the errors a parser is allowed to throw. */
export function isCodedError(error: unknown): boolean {
  return (
    (error instanceof SpiffeError || error instanceof TpmError || error instanceof EventLogError) &&
    typeof error.code === 'string' &&
    error.code.startsWith('ERR_')
  );
}

/** How an input is shown in a failure report: hex for bytes, JSON for text, capped. */
export function show(input: unknown): string {
  const limit = 4096;
  if (Array.isArray(input)) return `[${input.map(show).join(', ')}]`;
  if (input instanceof Uint8Array) {
    const hex = Buffer.from(input).toString('hex');
    if (hex.length <= limit) return `hex ${hex}`;
    const sha = createHash('sha256').update(input).digest('hex');
    return `${input.byteLength} bytes, sha256 ${sha}, starting hex ${hex.slice(0, limit)}…`;
  }
  const json =
    JSON.stringify(input, (_key, value: unknown) =>
      value instanceof Uint8Array ? `hex:${Buffer.from(value).toString('hex')}` : value,
    ) ?? String(input);
  return json.length <= limit ? json : `${json.slice(0, limit)}…`;
}

/**
 * Runs `parse` on `input`; passes when it returns or throws a coded error. A failure's message
 * names the target, the stray error and the input (fast-check reports the shrunk one, with the seed).
 */
export async function oracle<T>(target: string, input: T, parse: (input: T) => unknown): Promise<void> {
  try {
    await parse(input);
  } catch (error) {
    if (isCodedError(error)) return;
    const what = error instanceof Error ? `${error.name}: ${error.message}` : String(error);
    throw new Error(`${target} threw ${what} (not a coded error) on input ${show(input)}`, { cause: error });
  }
}

/**
 * One fuzz target: `runs` inputs from `inputs`, under the fixed seed and under the random one. Tests
 * are declared inside a describe whose name carries the random seed.
 */
export function fuzz<T>(
  target: string,
  inputs: fc.Arbitrary<T>,
  parse: (input: T) => unknown,
  runs: number,
): void {
  for (const [label, seed] of [
    ['fixed seed', FIXED_SEED],
    ['random seed', RANDOM_SEED],
  ] as const) {
    const numRuns = Math.max(1, Math.round(runs * SCALE));
    it(`${target} (${label} ${seed}, ${numRuns} runs) returns or throws a coded error`, async () => {
      await fc.assert(
        fc.asyncProperty(inputs, (input) => oracle(target, input, parse)),
        { seed, numRuns },
      );
    });
  }
}

/** A describe block whose title prints the random seed for replay. */
export function fuzzSuite(name: string, body: () => void): void {
  describe(`${name} [FUZZ_SEED=${RANDOM_SEED}]`, () => {
    beforeAll(() => {
      console.log(
        `${name}: fixed seed ${FIXED_SEED}, random seed ${RANDOM_SEED}; replay with FUZZ_SEED=${RANDOM_SEED} npx vitest run test/fuzz`,
      );
    });
    body();
  });
}

// ---------------------------------------------------------------------------------------------
// Mutations of real samples.

/** Boundary values a corrupted length or count field is set to. */
const LENGTHS = [0, 1, 2, 0x7f, 0x80, 0xff, 0x100, 0x7fff, 0x8000, 0xffff, 0x10000, 0x7fffffff, 0xffffffff];

type Mutation =
  | { kind: 'flip'; at: number; bit: number }
  | { kind: 'truncate'; at: number }
  | { kind: 'length'; at: number; width: 1 | 2 | 4; value: number }
  | { kind: 'splice'; other: number; at: number; from: number }
  | { kind: 'insert'; at: number; bytes: Uint8Array }
  | { kind: 'delete'; at: number; count: number };

const position = fc.nat({ max: 0xffffff });

const mutation: fc.Arbitrary<Mutation> = fc.oneof(
  fc.record({ kind: fc.constant('flip' as const), at: position, bit: fc.nat({ max: 7 }) }),
  fc.record({ kind: fc.constant('truncate' as const), at: position }),
  fc.record({
    kind: fc.constant('length' as const),
    at: position,
    width: fc.constantFrom(1 as const, 2 as const, 4 as const),
    value: fc.oneof(fc.constantFrom(...LENGTHS), fc.nat({ max: 0xffffffff })),
  }),
  fc.record({ kind: fc.constant('splice' as const), other: fc.nat(), at: position, from: position }),
  fc.record({
    kind: fc.constant('insert' as const),
    at: position,
    bytes: fc.uint8Array({ minLength: 1, maxLength: 16 }),
  }),
  fc.record({ kind: fc.constant('delete' as const), at: position, count: fc.integer({ min: 1, max: 64 }) }),
);

function apply(bytes: Buffer, m: Mutation, samples: readonly Uint8Array[]): Buffer {
  const at = bytes.length === 0 ? 0 : m.at % bytes.length;
  switch (m.kind) {
    case 'flip': {
      if (bytes.length === 0) return bytes;
      const out = Buffer.from(bytes);
      out[at] = (out[at] ?? 0) ^ (1 << m.bit);
      return out;
    }
    case 'truncate':
      return bytes.subarray(0, at);
    case 'length': {
      if (bytes.length < m.width) return bytes;
      const out = Buffer.from(bytes);
      const where = Math.min(at, out.length - m.width);
      out.writeUIntBE(m.value % 2 ** (8 * m.width), where, m.width);
      return out;
    }
    case 'splice': {
      const other = Buffer.from(samples[m.other % samples.length] ?? new Uint8Array());
      const from = other.length === 0 ? 0 : m.from % other.length;
      return Buffer.concat([bytes.subarray(0, at), other.subarray(from)]);
    }
    case 'insert':
      return Buffer.concat([bytes.subarray(0, at), m.bytes, bytes.subarray(at)]);
    case 'delete':
      return Buffer.concat([bytes.subarray(0, at), bytes.subarray(at + m.count)]);
  }
}

/**
 * Real samples with one to four mutations each: bit flips, truncation, a length or count field
 * overwritten with a boundary value, splicing with another sample, inserted and deleted bytes.
 */
export function mutated(samples: readonly Uint8Array[]): fc.Arbitrary<Uint8Array> {
  if (samples.length === 0) throw new Error('mutated() needs at least one sample');
  return fc
    .tuple(fc.nat({ max: samples.length - 1 }), fc.array(mutation, { minLength: 1, maxLength: 4 }))
    .map(([index, mutations]) =>
      mutations.reduce<Buffer>((bytes, m) => apply(bytes, m, samples), Buffer.from(samples[index] ?? [])),
    )
    .map((bytes) => new Uint8Array(bytes));
}

/** Text samples mutated as UTF-8 bytes and read back as text (invalid sequences become U+FFFD). */
export function mutatedText(samples: readonly string[]): fc.Arbitrary<string> {
  return mutated(samples.map((s) => Buffer.from(s))).map((b) => Buffer.from(b).toString('utf8'));
}

/** Random bytes, bounded so that no parser can take long on them. */
export const randomBytes = fc.uint8Array({ maxLength: 512 });
