import assert from 'node:assert/strict';
import { test } from 'node:test';

import {
  decodeChat,
  decodeFrame,
  decodeRoster,
  decodeSearch,
  directConv,
  encode,
  markedPieces,
  parseConv,
  peerOf,
} from '../src/protocol';

test('conversation ids: d:LOW:HIGH and g:GROUP', () => {
  assert.equal(directConv(9, 3), 'd:3:9');
  assert.deepEqual(parseConv('d:3:9'), { kind: 'direct', low: 3, high: 9 });
  assert.deepEqual(parseConv('g:7'), { kind: 'group', group: 7 });
  for (const bad of ['d:9:3', 'd:3:3', 'd:0:1', 'g:', 'g:-1', 'x:1', '']) assert.equal(parseConv(bad), null, bad);
  assert.equal(peerOf('d:3:9', 3), 9);
  assert.equal(peerOf('d:3:9', 4), null);
});

test('a login ack: roster and offline messages as JSON text inside JSON', () => {
  const frame = JSON.stringify({
    msgid: 2,
    errno: 0,
    seq: 1,
    id: 1,
    name: 'alice',
    friends: [JSON.stringify({ id: 2, name: 'bob', state: 'online' })],
    groups: [
      JSON.stringify({
        id: 7,
        groupname: 'team',
        groupdesc: 'us',
        users: [JSON.stringify({ id: 1, name: 'alice', state: 'online', role: 'creator' })],
      }),
    ],
    offlinemsg: [
      JSON.stringify({ msgid: 6, id: 2, name: 'bob', toid: 1, msg: 'hi', time: '2025-01-01 10:00:00', conv: 'd:1:2', cseq: 5, mid: 'm5', rseq: 3 }),
      'not json',
    ],
    roster_more: true,
  });
  const decoded = decodeFrame(frame);
  assert.ok(decoded && decoded.kind === 'login');
  assert.equal(decoded.failure, null);
  const ack = decoded.ack;
  assert.ok(ack);
  assert.deepEqual(ack.friends, [{ id: 2, name: 'bob', online: true }]);
  assert.deepEqual(ack.groups, [
    { id: 7, name: 'team', description: 'us', members: [{ id: 1, name: 'alice', online: true, creator: true }] },
  ]);
  assert.equal(ack.offline.length, 1);
  assert.deepEqual(ack.offline[0], {
    mid: 'm5',
    conv: 'd:1:2',
    cseq: 5,
    from: 2,
    fromName: 'bob',
    text: 'hi',
    time: '2025-01-01 10:00:00',
    rseq: 3,
  });
  assert.equal(ack.rosterMore, true);
});

test('a refused login says why; a classic bare refusal gets words', () => {
  const refused = decodeFrame('{"errmsg":"id or password is invalid!","errno":1,"msgid":2,"seq":4}');
  assert.ok(refused && refused.kind === 'login');
  assert.equal(refused.seq, 4);
  assert.deepEqual(refused.failure, { errno: 1, errmsg: 'id or password is invalid!', retryAfter: null });
  const bare = decodeFrame('{"errno":1,"msgid":5}');
  assert.ok(bare && bare.kind === 'register');
  assert.match(bare.failure?.errmsg ?? '', /name may be taken/);
  const taken = decodeFrame('{"errmsg":"the name is taken","errno":1,"msgid":5,"seq":1}');
  assert.ok(taken && taken.kind === 'register');
  assert.equal(taken.failure?.errmsg, 'the name is taken');
});

test('the roster reply (msgid 21) has plain objects', () => {
  const roster = decodeRoster({
    friends: [{ id: 2, name: 'bob', online: false }],
    groups: [{ id: 7, name: 'team', description: '', members: [{ id: 2, name: 'bob', online: true, creator: false }] }],
  });
  assert.deepEqual(roster.friends, [{ id: 2, name: 'bob', online: false }]);
  assert.equal(roster.groups[0]?.members[0]?.online, true);
});

test('chats: conv follows from the addresses when a frame has none', () => {
  assert.equal(decodeChat({ msgid: 6, id: 5, toid: 2, msg: 'x' })?.conv, 'd:2:5');
  assert.equal(decodeChat({ msgid: 10, id: 5, groupid: 3, msg: 'x' })?.conv, 'g:3');
  assert.equal(decodeChat({ msgid: 6, id: 5, msg: 'x' }), null);
  assert.equal(decodeChat({ msgid: 7, id: 5, toid: 2, msg: 'x' }), null);
  assert.equal(decodeChat({ msgid: 6, id: '5', toid: 2, msg: 'x' }), null);
});

test('live events: read, typing, delivered, presence; unsolicited errors', () => {
  assert.deepEqual(decodeFrame('{"msgid":18,"conv":"d:1:2","id":2,"upto":9}'), {
    kind: 'read',
    conv: 'd:1:2',
    reader: 2,
    upto: 9,
  });
  assert.deepEqual(decodeFrame('{"msgid":19,"conv":"g:7","groupid":7,"id":2,"name":"bob"}'), {
    kind: 'typing',
    conv: 'g:7',
    id: 2,
    name: 'bob',
  });
  assert.deepEqual(decodeFrame('{"msgid":20,"conv":"d:1:2","id":2,"upto":9}'), {
    kind: 'delivered',
    conv: 'd:1:2',
    id: 2,
    upto: 9,
  });
  assert.deepEqual(decodeFrame('{"id":2,"msgid":22,"online":false}'), {
    kind: 'presence',
    id: 2,
    online: false,
  });
  // A presence without its state is not guessed at.
  assert.equal(decodeFrame('{"id":2,"msgid":22}')?.kind, 'unknown');
  const error = decodeFrame('{"errmsg":"user 9 does not exist","errno":5,"msgid":11}');
  assert.ok(error && error.kind === 'reply');
  assert.equal(error.seq, null);
  assert.equal(error.failure?.errmsg, 'user 9 does not exist');
  assert.equal(decodeFrame('[1]'), null);
  assert.equal(decodeFrame('{'), null);
});

test('requests', () => {
  assert.deepEqual(encode.chat(1, 'd:1:2', 'hi', 'c1'), { msgid: 6, id: 1, toid: 2, msg: 'hi', cmid: 'c1' });
  assert.deepEqual(encode.chat(2, 'd:1:2', 'hi', 'c1'), { msgid: 6, id: 2, toid: 1, msg: 'hi', cmid: 'c1' });
  assert.deepEqual(encode.chat(1, 'g:7', 'hi', 'c1'), { msgid: 10, id: 1, groupid: 7, msg: 'hi', cmid: 'c1' });
  assert.equal(encode.chat(3, 'd:1:2', 'hi', 'c1'), null);
  const pw = { password: 'pw', remember: null };
  assert.deepEqual(encode.login(1, pw, 0), { msgid: 1, id: 1, password: 'pw', acks: true, presence: true });
  assert.deepEqual(encode.login(1, pw, 42), { msgid: 1, id: 1, password: 'pw', acks: true, presence: true, since: 42 });
  // Staying signed in: a token is asked for, then logged in with.
  assert.deepEqual(encode.login(1, { password: 'pw', remember: 'web: Chrome on Linux' }, 0), {
    msgid: 1,
    id: 1,
    password: 'pw',
    remember: true,
    device: 'web: Chrome on Linux',
    acks: true,
    presence: true,
  });
  assert.deepEqual(encode.login(1, { token: 'ccs_ab' }, 7), { msgid: 1, id: 1, token: 'ccs_ab', acks: true, presence: true, since: 7 });
  assert.deepEqual(encode.logoutEverywhere(), { msgid: 23 });
  assert.deepEqual(encode.changePassword('a', 'b'), { msgid: 24, password: 'a', new_password: 'b' });
  assert.deepEqual(decodeFrame('{"msgid":23,"reason":"you were logged out everywhere"}'), {
    kind: 'signed-out',
    reason: 'you were logged out everywhere',
  });
  assert.deepEqual(encode.history('g:7', { after: 10, limit: 200 }), { msgid: 16, conv: 'g:7', after: 10, limit: 200 });
  assert.deepEqual(encode.history('g:7', {}), { msgid: 16, conv: 'g:7' });
});

test('a search reply: hits as chats with their marks; odd marks dropped', () => {
  const page = decodeSearch({
    more: true,
    hits: [
      { msgid: 6, id: 2, name: 'bob', toid: 1, msg: '明天去北京开会', conv: 'd:1:2', cseq: 9, mid: 'm9', marks: [[3, 5], [5, 4], 'x', [1]] },
      { msgid: 99 },
    ],
  });
  assert.equal(page.more, true);
  assert.equal(page.hits.length, 1);
  assert.equal(page.hits[0]?.chat.text, '明天去北京开会');
  assert.deepEqual(page.hits[0]?.marks, [[3, 5]]);
  assert.deepEqual(encode.search('北京', 0, 20), { msgid: 31, q: '北京', limit: 20 });
  assert.deepEqual(encode.search('北京', 20, 20), { msgid: 31, q: '北京', limit: 20, offset: 20 });
});

test('marked pieces count code points and never throw on odd marks', () => {
  assert.deepEqual(markedPieces('明天去北京开会', [[3, 5]]), [
    { text: '明天去', marked: false },
    { text: '北京', marked: true },
    { text: '开会', marked: false },
  ]);
  // An emoji is one code point (two UTF-16 units).
  assert.deepEqual(markedPieces('🙂 hi', [[2, 4]]), [
    { text: '🙂 ', marked: false },
    { text: 'hi', marked: true },
  ]);
  // Overlapping, unordered and past the end: clipped.
  assert.deepEqual(markedPieces('abcdef', [[4, 99], [0, 2], [1, 3]]), [
    { text: 'ab', marked: true },
    { text: 'c', marked: true },
    { text: 'd', marked: false },
    { text: 'ef', marked: true },
  ]);
  assert.deepEqual(markedPieces('', [[0, 1]]), []);
});
