import { describe, expect, it } from 'vitest';
import { activationTime, preparationTime, rotationStep, shouldPrune } from '../../src/server/ca/rotation.js';

const H = 3600;
const D = 86400;

describe('CA rotation timing', () => {
  it('prepares at half and activates at a sixth of a 24h lifetime', () => {
    const ca = { notBefore: 0, notAfter: 24 * H };
    expect(preparationTime(ca)).toBe(12 * H);
    expect(activationTime(ca)).toBe(20 * H);
  });

  it('caps preparation at 30 days and activation at 7 days before expiry', () => {
    const ca = { notBefore: 0, notAfter: 365 * D };
    expect(preparationTime(ca)).toBe(335 * D);
    expect(activationTime(ca)).toBe(358 * D);
  });

  it('steps none → prepare → none → activate', () => {
    const ca = { notBefore: 0, notAfter: 24 * H };
    expect(rotationStep(ca, false, 12 * H - 1)).toBe('none');
    expect(rotationStep(ca, false, 12 * H)).toBe('prepare');
    expect(rotationStep(ca, true, 20 * H - 1)).toBe('none');
    expect(rotationStep(ca, true, 20 * H)).toBe('activate');
  });

  it('prunes a bundle entry one day after it expired, not before', () => {
    expect(shouldPrune(100, 100 + D - 1)).toBe(false);
    expect(shouldPrune(100, 100 + D)).toBe(true);
  });
});
