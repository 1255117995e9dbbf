import assert from 'node:assert/strict';
import { test } from 'node:test';

import { type NotificationApi, Notifier, shouldNotify } from '../src/notify';
import type { Message } from '../src/store';

function message(fields: Partial<Message> = {}): Message {
  return {
    mid: 'm1',
    conv: 'd:1:2',
    cseq: 1,
    from: 2,
    fromName: 'bob',
    text: 'hi',
    time: '2025-01-01 10:00:00',
    at: 0,
    mine: false,
    pending: null,
    ...fields,
  } as Message;
}

test('a notification only for others’ messages where the user is not looking', () => {
  assert.equal(shouldNotify(message(), 'g:7', true), true, 'another conversation is open');
  assert.equal(shouldNotify(message(), null, true), true, 'none is open');
  assert.equal(shouldNotify(message(), 'd:1:2', false), true, 'the tab is hidden');
  assert.equal(shouldNotify(message(), 'd:1:2', true), false, 'it is on screen');
  assert.equal(shouldNotify(message({ mine: true }), null, false), false, 'never my own');
});

test('shown only once allowed, tagged by conversation; a click opens it', () => {
  const shown: { title: string; options: NotificationOptions | undefined; closed: boolean; onclick: (() => void) | null }[] = [];
  let permission: NotificationPermission = 'default';
  class Fake {
    static get permission(): NotificationPermission {
      return permission;
    }
    static async requestPermission(): Promise<NotificationPermission> {
      permission = 'granted';
      return permission;
    }
    onclick: (() => void) | null = null;
    constructor(title: string, options?: NotificationOptions) {
      const entry = { title, options, closed: false, onclick: null as (() => void) | null };
      shown.push(entry);
      Object.defineProperty(this, 'onclick', {
        set: (f: () => void) => (entry.onclick = f),
        get: () => entry.onclick,
      });
    }
    close(): void {
      shown[shown.length - 1]!.closed = true;
    }
  }
  const opened: string[] = [];
  (globalThis as unknown as { window: unknown }).window = { focus: () => {} };
  const notifier = new Notifier(() => Fake as unknown as NotificationApi, (conv) => opened.push(conv));
  notifier.show(message(), 'bob');
  assert.equal(shown.length, 0, 'not before the user allowed them');
  assert.equal(notifier.permission, 'default');
  return notifier.ask().then(() => {
    notifier.show(message({ text: 'x'.repeat(500) }), 'bob');
    notifier.show(message({ conv: 'g:7', fromName: 'carol', text: 'all' }), 'team');
    assert.equal(shown.length, 2);
    assert.equal(shown[0]!.title, 'bob');
    assert.equal(shown[0]!.options?.tag, 'd:1:2');
    assert.ok((shown[0]!.options?.body ?? '').length <= 140);
    assert.equal(shown[1]!.options?.body, 'carol: all');
    shown[1]!.onclick?.();
    assert.deepEqual(opened, ['g:7']);
  });
});
