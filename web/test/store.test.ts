import assert from 'node:assert/strict';
import { test } from 'node:test';

import type { Chat } from '../src/protocol';
import { Store, typingText } from '../src/store';

const ME = 1;
const BOB = 2;
const DM = 'd:1:2';
const T0 = Date.UTC(2025, 0, 1, 10, 0, 0);

function chat(cseq: number | null, fields: Partial<Chat> = {}): Chat {
  return {
    mid: cseq === null ? '' : `m${cseq}`,
    conv: DM,
    cseq,
    from: BOB,
    fromName: 'bob',
    text: `message ${cseq}`,
    time: '2025-01-01 10:00:00',
    rseq: null,
    ...fields,
  };
}

function texts(store: Store, conv = DM): string[] {
  return store.conversations.get(conv)?.messages.map((m) => m.text) ?? [];
}

test('a message that arrives twice is shown once (by mid, then by cseq)', () => {
  const store = new Store(ME, 'alice');
  assert.equal(store.addChats([chat(5)], T0).length, 1);
  assert.equal(store.addChats([chat(5)], T0).length, 0, 'same mid');
  assert.equal(store.addChats([chat(5, { mid: 'other' })], T0).length, 0, 'same cseq');
  assert.deepEqual(texts(store), ['message 5']);
});

test('messages are ordered by cseq however they arrive; history pages merge in', () => {
  const store = new Store(ME, 'alice');
  store.addChats([chat(12), chat(10)], T0);
  store.applyHistoryPage(DM, [chat(9), chat(10), chat(11)], true, 'latest', T0);
  assert.deepEqual(texts(store), ['message 9', 'message 10', 'message 11', 'message 12']);
  const c = store.conversations.get(DM);
  assert.ok(c);
  assert.equal(c.historyLoaded, true);
  assert.equal(c.hasOlder, true);
  assert.equal(store.oldestCseq(DM), 9);
  assert.equal(store.newestCseq(DM), 12);
  store.applyHistoryPage(DM, [chat(8)], false, 'older', T0);
  assert.equal(c.hasOlder, false);
  assert.equal(store.oldestCseq(DM), 8);
});

test('a message sent here: sending, then numbered by the reply, never doubled', () => {
  const store = new Store(ME, 'alice');
  store.addChats([chat(10)], T0);
  const m = store.addOutgoing(DM, 'hello', 'c1', T0, '2025-01-01 10:00:00');
  assert.ok(m);
  assert.equal(m.mid, '1-c1');
  assert.equal(store.ticks(m), 'sending');
  assert.deepEqual(store.unsent(), [m]);
  // Bob answers before my reply comes back: mine stays last until numbered.
  store.addChats([chat(12)], T0);
  assert.deepEqual(texts(store), ['message 10', 'message 12', 'hello']);
  store.confirmSent(DM, '1-c1', '1-c1', 11);
  assert.equal(store.ticks(m), 'sent');
  assert.deepEqual(texts(store), ['message 10', 'hello', 'message 12']);
  assert.deepEqual(store.unsent(), []);
  // Its copy from history (after a reconnect) changes nothing.
  store.addChats([chat(11, { mid: '1-c1', from: ME, fromName: 'alice', text: 'hello' })], T0);
  assert.deepEqual(texts(store), ['message 10', 'hello', 'message 12']);
});

test('a sent message whose copy comes back before the reply (history, or the reply was lost)', () => {
  const store = new Store(ME, 'alice');
  const m = store.addOutgoing(DM, 'hello', 'c2', T0, '');
  assert.ok(m);
  store.addChats([chat(20, { mid: '1-c2', from: ME, text: 'hello' })], T0);
  assert.deepEqual(texts(store), ['hello']);
  assert.equal(m.cseq, 20);
  assert.equal(m.pending, null);
  store.confirmSent(DM, '1-c2', '1-c2', 20);
  assert.deepEqual(texts(store), ['hello']);
  // A reply naming another mid for the same cseq keeps one copy.
  const again = store.addOutgoing(DM, 'again', 'c3', T0, '');
  assert.ok(again);
  store.addChats([chat(21, { mid: 'server-21', from: ME, text: 'again' })], T0);
  store.confirmSent(DM, '1-c3', 'server-21', 21);
  assert.deepEqual(texts(store), ['hello', 'again']);
});

test('a failed message can be sent again', () => {
  const store = new Store(ME, 'alice');
  const m = store.addOutgoing(DM, 'x', 'c4', T0, '');
  assert.ok(m);
  store.markFailed(DM, m.mid);
  assert.equal(store.ticks(m), 'failed');
  assert.deepEqual(store.unsent(), []);
  assert.equal(store.markSending(DM, m.mid), m);
  assert.equal(store.ticks(m), 'sending');
});

test('ticks: sent, delivered, read (one-to-one); groups stay at sent', () => {
  const store = new Store(ME, 'alice');
  store.addChats([chat(5, { from: ME, mid: 'mine5' }), chat(6, { from: ME, mid: 'mine6' })], T0);
  const [five, six] = store.conversations.get(DM)?.messages ?? [];
  assert.ok(five && six);
  assert.equal(store.ticks(five), 'sent');
  store.applyDelivered(DM, BOB, 6);
  assert.equal(store.ticks(six), 'delivered');
  store.applyRead(DM, BOB, 5);
  assert.equal(store.ticks(five), 'read');
  assert.equal(store.ticks(six), 'delivered');
  store.applyConversationList([{ conv: DM, peer: BOB, groupId: null, last: null, read: 0, unread: 0, peerRead: 6 }]);
  assert.equal(store.ticks(six), 'read');
  // My own read marks (another device) and "delivered" from myself are not the peer's.
  store.applyRead(DM, ME, 100);
  store.applyDelivered(DM, ME, 100);
  assert.equal(store.conversations.get(DM)?.peerRead, 6);
  store.addChats([chat(3, { conv: 'g:7', from: ME, mid: 'g3' })], T0);
  const group = store.conversations.get('g:7')?.messages[0];
  assert.ok(group);
  store.applyRead('g:7', BOB, 3);
  assert.equal(store.ticks(group), 'sent');
  const theirs = store.conversations.get(DM)?.messages.find((m) => !m.mine);
  assert.equal(theirs, undefined);
  store.addChats([chat(7)], T0);
  const seven = store.conversations.get(DM)?.messages.find((m) => m.cseq === 7);
  assert.ok(seven);
  assert.equal(store.ticks(seven), null);
});

test('unread: the server count, plus what arrived since, minus what I read', () => {
  const store = new Store(ME, 'alice');
  store.applyConversationList([
    { conv: DM, peer: BOB, groupId: null, last: chat(10), read: 8, unread: 2, peerRead: 0 },
  ]);
  assert.equal(store.unread(DM), 2);
  store.addChats([chat(11), chat(12, { from: ME, mid: 'mine' })], T0);
  assert.equal(store.unread(DM), 3, 'mine do not count');
  // History loading older messages adds nothing unread.
  store.applyHistoryPage(DM, [chat(9), chat(10)], true, 'latest', T0);
  assert.equal(store.unread(DM), 3);
  // Another device of mine read up to 10: the server's count is spent.
  store.applyRead(DM, ME, 10);
  assert.equal(store.unread(DM), 1);
  store.applyReadReply(DM, 12, 0);
  assert.equal(store.unread(DM), 0);
  store.addChats([chat(13)], T0);
  assert.equal(store.unread(DM), 1);
  // A list that trails (history has not got 13 yet) counts nothing twice.
  store.applyConversationList([
    { conv: DM, peer: BOB, groupId: null, last: chat(12, { from: ME, mid: 'mine' }), read: 12, unread: 0, peerRead: 0 },
  ]);
  assert.equal(store.unread(DM), 1);
  // One that has it replaces the count.
  store.applyConversationList([{ conv: DM, peer: BOB, groupId: null, last: chat(13), read: 12, unread: 1, peerRead: 0 }]);
  assert.equal(store.unread(DM), 1);
});

test('the roster names conversations; a stranger is named by their messages', () => {
  const store = new Store(ME, 'alice');
  store.applyRoster(
    [{ id: BOB, name: 'bob', online: true }],
    [{ id: 7, name: 'team', description: 'us', members: [] }],
  );
  assert.equal(store.conversations.get(DM)?.name, 'bob');
  assert.equal(store.conversations.get(DM)?.online, true);
  assert.equal(store.conversations.get('g:7')?.name, 'team');
  store.addChats([chat(1, { conv: 'd:1:9', from: 9, fromName: 'carol' })], T0);
  assert.equal(store.conversations.get('d:1:9')?.name, 'carol');
  // Not mine: ignored.
  store.addChats([chat(1, { conv: 'd:2:3' })], T0);
  assert.equal(store.conversations.has('d:2:3'), false);
});

test('presence pushed for a friend and a fellow member; an unknown one asks for the roster', () => {
  const store = new Store(ME, 'alice');
  store.applyRoster(
    [{ id: BOB, name: 'bob', online: false }],
    [{ id: 7, name: 'team', description: '', members: [{ id: 3, name: 'carol', online: true, creator: false }] }],
  );
  assert.equal(store.applyPresence(BOB, true), true);
  assert.equal(store.conversations.get(DM)?.online, true);
  assert.equal(store.applyPresence(3, false), true);
  assert.equal(store.conversations.get('g:7')?.members.get(3)?.online, false);
  assert.equal(store.applyPresence(9, true), false, 'nobody here shows user 9');
});

test('conversations are ordered by last activity, then by name', () => {
  const store = new Store(ME, 'alice');
  store.applyRoster(
    [
      { id: 2, name: 'bob', online: false },
      { id: 3, name: 'ann', online: false },
      { id: 4, name: 'zed', online: false },
    ],
    [],
  );
  assert.deepEqual(store.sortedConversations().map((c) => c.name), ['ann', 'bob', 'zed']);
  store.addChats([chat(5, { conv: 'd:1:4', from: 4 })], T0);
  store.addChats([chat(5, { conv: 'd:1:2', from: 2 })], T0);
  // Same second: the later arrival is first.
  assert.deepEqual(store.sortedConversations().map((c) => c.name), ['bob', 'zed', 'ann']);
  store.addOutgoing('d:1:4', 'hi', 'c9', T0 + 5000, '');
  assert.deepEqual(store.sortedConversations().map((c) => c.name), ['zed', 'bob', 'ann']);
  // An older page of history does not move a conversation up.
  store.applyHistoryPage('d:1:2', [chat(4, { conv: 'd:1:2', time: '2024-01-01 00:00:00' })], false, 'older', T0 + 9000);
  assert.deepEqual(store.sortedConversations().map((c) => c.name), ['zed', 'bob', 'ann']);
});

test('typing shows for a while, and stops when their message arrives', () => {
  const store = new Store(ME, 'alice');
  store.applyRoster([{ id: BOB, name: 'bob', online: true }], []);
  store.setTyping(DM, BOB, 'bob', T0);
  assert.deepEqual(store.typingNames(DM, T0 + 1000), ['bob']);
  assert.deepEqual(store.typingNames(DM, T0 + 4500), []);
  store.setTyping(DM, BOB, 'bob', T0);
  store.addChats([chat(1)], T0 + 100);
  assert.deepEqual(store.typingNames(DM, T0 + 200), []);
  store.setTyping(DM, ME, 'alice', T0);
  assert.deepEqual(store.typingNames(DM, T0 + 200), []);
  assert.equal(typingText(['bob']), 'bob is typing…');
  assert.equal(typingText(['a', 'b']), 'a and b are typing…');
  assert.equal(typingText([]), '');
});

test('the last message: whichever is newer, loaded or from the list', () => {
  const store = new Store(ME, 'alice');
  store.applyConversationList([{ conv: DM, peer: BOB, groupId: null, last: chat(10), read: 10, unread: 0, peerRead: 0 }]);
  assert.equal(store.lastMessage(DM)?.text, 'message 10');
  store.addChats([chat(11)], T0);
  assert.equal(store.lastMessage(DM)?.text, 'message 11');
  const pending = store.addOutgoing(DM, 'typed', 'c5', T0, '');
  assert.equal(store.lastMessage(DM), pending);
});

test('a conversation started here goes to the top', () => {
  const store = new Store(ME, 'alice');
  store.addChats([chat(5, { conv: 'd:1:4', from: 4 })], T0);
  store.touchConversation('g:9', T0 + 1000);
  assert.deepEqual(store.sortedConversations().map((c) => c.conv), ['g:9', 'd:1:4']);
});

test('catching up starts at the first gap among the newest, not after the newest', () => {
  const store = new Store(ME, 'alice');
  assert.equal(store.catchUpAfter(DM, 1000), 0, 'nothing here: nothing to fill');
  store.addChats([chat(10), chat(11), chat(12)], T0);
  assert.equal(store.catchUpAfter(DM, 1000), 12, 'no gap: after the newest');
  // 14 came live; 13, numbered earlier, reached another device later.
  store.addChats([chat(14), chat(15)], T0);
  assert.equal(store.catchUpAfter(DM, 1000), 12, 'after the gap: 13 is fetched');
  store.addChats([chat(13)], T0);
  assert.equal(store.catchUpAfter(DM, 1000), 15);
  // A gap further back than the window is not looked for.
  store.addChats([chat(2000)], T0);
  assert.equal(store.catchUpAfter(DM, 100), 1900);
  assert.equal(store.catchUpAfter(DM, 5000), 15);
});
