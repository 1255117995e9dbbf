import assert from 'node:assert/strict';
import { test } from 'node:test';

import { dayKey, dayLabel, formatServerTime, parseServerTime } from '../src/time';

test('server times are UTC in the classic format', () => {
  assert.equal(parseServerTime('2025-01-01 10:00:00'), Date.UTC(2025, 0, 1, 10, 0, 0));
  assert.equal(parseServerTime('2026-11-25T12:30:15Z'), Date.UTC(2026, 10, 25, 12, 30, 15));
  assert.equal(parseServerTime('t'), null);
  assert.equal(parseServerTime(''), null);
  // A local time with no zone is not guessed at.
  assert.equal(parseServerTime('Tue Nov 25 2025'), null);
  const now = Date.UTC(2025, 2, 7, 8, 9, 10);
  assert.equal(formatServerTime(now), '2025-03-07 08:09:10');
  assert.equal(parseServerTime(formatServerTime(now)), now);
});

test('day labels', () => {
  const now = new Date(2025, 2, 7, 12, 0, 0).getTime();
  assert.equal(dayLabel(new Date(2025, 2, 7, 0, 5).getTime(), now), 'Today');
  assert.equal(dayLabel(new Date(2025, 2, 6, 23, 55).getTime(), now), 'Yesterday');
  assert.notEqual(dayLabel(new Date(2024, 2, 6).getTime(), now), 'Yesterday');
  assert.equal(dayKey(new Date(2025, 0, 2, 3, 4).getTime()), '2025-01-02');
});
