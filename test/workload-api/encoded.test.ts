import { describe, expect, it } from 'vitest';
import { EncodedResponses } from '../../src/workload-api/encoded.js';

/** An encoder that records how often it ran and answers distinct bytes each time. */
function counting(label: string) {
  let calls = 0;
  return {
    encode: () => Buffer.from(`${label}#${++calls}`),
    get calls() {
      return calls;
    },
  };
}

describe('EncodedResponses', () => {
  it('encodes once for the same shape and objects, and hands every later caller the same bytes', () => {
    const cache = new EncodedResponses();
    const svid = {};
    const bundle = {};
    const first = counting('a');
    const a = cache.get('FetchX509SVID:1:1:0', [svid, bundle], first.encode);
    const b = cache.get('FetchX509SVID:1:1:0', [svid, bundle], first.encode);
    expect(first.calls).toBe(1);
    expect(b).toBe(a);
  });

  it('encodes again when any one object of the path differs, and keeps both', () => {
    const cache = new EncodedResponses();
    const [s1, s2, bundle, otherBundle] = [{}, {}, {}, {}];
    const one = cache.get('X:2:1', [s1, s2, bundle], () => Buffer.from('one'));
    const swapped = cache.get('X:2:1', [s2, s1, bundle], () => Buffer.from('swapped'));
    const rebundled = cache.get('X:2:1', [s1, s2, otherBundle], () => Buffer.from('rebundled'));
    expect([one, swapped, rebundled].map(String)).toEqual(['one', 'swapped', 'rebundled']);
    expect(String(cache.get('X:2:1', [s1, s2, bundle], () => Buffer.from('again')))).toBe('one');
  });

  it('keeps the same objects apart under another shape (another method, or another split)', () => {
    const cache = new EncodedResponses();
    const [x, y] = [{}, {}];
    const svids = cache.get('FetchX509SVID:2:0', [x, y], () => Buffer.from('two svids'));
    const split = cache.get('FetchX509SVID:1:1', [x, y], () => Buffer.from('one svid, one bundle'));
    const other = cache.get('FetchX509Bundles:2:0', [x, y], () => Buffer.from('bundles'));
    expect([svids, split, other].map(String)).toEqual(['two svids', 'one svid, one bundle', 'bundles']);
  });

  it('keeps nothing when encoding fails, so the next caller encodes', () => {
    const cache = new EncodedResponses();
    const part = {};
    expect(() =>
      cache.get('X:1', [part], () => {
        throw new Error('render failed');
      }),
    ).toThrow('render failed');
    expect(String(cache.get('X:1', [part], () => Buffer.from('ok')))).toBe('ok');
  });
});
