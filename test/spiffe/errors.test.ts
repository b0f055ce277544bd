import { describe, expect, it } from 'vitest';
import { isSpiffeError, SpiffeError } from '../../src/spiffe/errors.js';
import { SpiffeId } from '../../src/spiffe/spiffe-id.js';

describe('SpiffeError', () => {
  it('is an Error with a name, a stable code and a cause', () => {
    const cause = new Error('inner');
    const err = new SpiffeError('ERR_BUNDLE_PARSE', 'bad bundle', { cause });
    expect(err).toBeInstanceOf(Error);
    expect({ name: err.name, code: err.code, message: err.message, cause: err.cause }).toEqual({
      name: 'SpiffeError',
      code: 'ERR_BUNDLE_PARSE',
      message: 'bad bundle',
      cause,
    });
  });

  it('isSpiffeError narrows by class and optionally by code', () => {
    let caught: unknown;
    try {
      SpiffeId.parse('spiffe://example.org/a//b');
    } catch (err) {
      caught = err;
    }
    expect(isSpiffeError(caught)).toBe(true);
    expect(isSpiffeError(caught, 'ERR_SPIFFEID_EMPTY_SEGMENT')).toBe(true);
    expect(isSpiffeError(caught, 'ERR_SPIFFEID_DOT_SEGMENT')).toBe(false);
    expect(isSpiffeError(new Error('x'))).toBe(false);
  });
});
