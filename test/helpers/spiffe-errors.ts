import { expect } from 'vitest';
import { SpiffeError, type SpiffeErrorCode } from '../../src/spiffe/errors.js';

/** Runs `fn` and asserts it throws a SpiffeError with `code` whose message matches `rule`. */
export function expectSpiffeError(fn: () => unknown, code: SpiffeErrorCode, rule: RegExp): SpiffeError {
  let caught: unknown;
  try {
    fn();
  } catch (err) {
    caught = err;
  }
  return checkError(caught, code, rule);
}

/** Awaits `promise` and asserts it rejects with a SpiffeError with `code` whose message matches `rule`. */
export async function expectSpiffeRejection(
  promise: Promise<unknown>,
  code: SpiffeErrorCode,
  rule: RegExp,
): Promise<SpiffeError> {
  let caught: unknown;
  try {
    await promise;
  } catch (err) {
    caught = err;
  }
  return checkError(caught, code, rule);
}

function checkError(caught: unknown, code: SpiffeErrorCode, rule: RegExp): SpiffeError {
  expect(caught, `expected a SpiffeError ${code}, nothing was thrown`).toBeInstanceOf(SpiffeError);
  const err = caught as SpiffeError;
  expect({ code: err.code, message: err.message }).toEqual({ code, message: expect.stringMatching(rule) });
  return err;
}
