import assert from 'node:assert/strict';
import { test } from 'node:test';

import {
  Connection,
  ConnectionLost,
  type ConnectionState,
  DEFAULT_TIMINGS,
  ServerError,
  UNREACHABLE,
  backoffDelay,
} from '../src/connection';
import type { LoginAck, ServerFrame } from '../src/protocol';

/** A WebSocket stand-in: the test plays the server. */
class FakeSocket {
  static readonly CONNECTING = 0;
  static readonly OPEN = 1;
  static readonly CLOSED = 3;
  static all: FakeSocket[] = [];
  readyState = FakeSocket.CONNECTING;
  sent: Record<string, unknown>[] = [];
  onopen: (() => void) | null = null;
  onmessage: ((e: { data: string }) => void) | null = null;
  onclose: (() => void) | null = null;
  onerror: (() => void) | null = null;
  constructor(readonly url: string) {
    FakeSocket.all.push(this);
  }
  send(text: string): void {
    this.sent.push(JSON.parse(text) as Record<string, unknown>);
  }
  close(): void {
    this.readyState = FakeSocket.CLOSED;
  }
  // The server's side:
  open(): void {
    this.readyState = FakeSocket.OPEN;
    this.onopen?.();
  }
  push(frame: Record<string, unknown>): void {
    this.onmessage?.({ data: JSON.stringify(frame) });
  }
  drop(): void {
    this.readyState = FakeSocket.CLOSED;
    this.onclose?.();
  }
}
(globalThis as unknown as { WebSocket: unknown }).WebSocket = FakeSocket;

const FAST = { ...DEFAULT_TIMINGS, ackEveryMs: 5, backoffMinMs: 10, backoffMaxMs: 20 };
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const last = () => FakeSocket.all[FakeSocket.all.length - 1]!;

function recorder() {
  const log = {
    states: [] as ConnectionState[],
    logins: [] as { ack: LoginAck; resumed: boolean }[],
    frames: [] as ServerFrame[],
    problems: [] as string[],
  };
  return {
    log,
    handlers: {
      state: (s: ConnectionState) => log.states.push(s),
      loggedIn: (ack: LoginAck, resumed: boolean) => log.logins.push({ ack, resumed }),
      frame: (f: ServerFrame) => log.frames.push(f),
      fatal: () => {},
      problem: (m: string) => log.problems.push(m),
    },
  };
}

test('logs in, acknowledges inbox entries, answers requests by seq, resumes with since', async () => {
  FakeSocket.all = [];
  const { log, handlers } = recorder();
  const connection = new Connection('ws://x/ws', { id: 1, secret: { password: 'pw', remember: null } }, handlers, FAST);
  const started = connection.start();
  last().open();
  const login = last().sent[0]!;
  assert.equal(login['msgid'], 1);
  assert.equal(login['acks'], true);
  assert.equal(login['since'], undefined);
  const offline = JSON.stringify({ msgid: 6, id: 2, name: 'bob', toid: 1, msg: 'hi', conv: 'd:1:2', cseq: 4, mid: 'a', rseq: 3 });
  last().push({ msgid: 2, errno: 0, seq: login['seq'], id: 1, name: 'alice', offlinemsg: [offline] });
  const ack = await started;
  assert.equal(ack.offline.length, 1);
  assert.equal(connection.state, 'connected');
  await sleep(20);
  assert.deepEqual(last().sent.filter((f) => f['msgid'] === 12), [{ msgid: 12, ack: 3 }]);

  last().push({ msgid: 6, id: 2, name: 'bob', toid: 1, msg: 'again', conv: 'd:1:2', cseq: 5, mid: 'b', rseq: 5 });
  assert.equal(log.frames.length, 1);
  await sleep(20);
  assert.deepEqual(last().sent.filter((f) => f['msgid'] === 12).pop(), { msgid: 12, ack: 5 });

  // Group chats come from the group's log: acknowledged per group by cseq.
  last().push({ msgid: 10, id: 2, name: 'bob', groupid: 7, msg: 'g1', conv: 'g:7', cseq: 8, mid: 'c' });
  last().push({ msgid: 10, id: 2, name: 'bob', groupid: 7, msg: 'g2', conv: 'g:7', cseq: 9, mid: 'd' });
  await sleep(20);
  assert.deepEqual(last().sent.filter((f) => f['msgid'] === 12).pop(), { msgid: 12, ack: 9, conv: 'g:7' });

  const answered = connection.request({ msgid: 17 });
  const request = last().sent[last().sent.length - 1]!;
  last().push({ msgid: 11, errno: 0, seq: request['seq'], conversations: [] });
  assert.deepEqual(await answered, { msgid: 11, errno: 0, seq: request['seq'], conversations: [] });

  const refused = connection.request({ msgid: 7, id: 1, friendid: 9 });
  const second = last().sent[last().sent.length - 1]!;
  last().push({ msgid: 11, errno: 5, errmsg: 'user 9 does not exist', seq: second['seq'] });
  await assert.rejects(refused, (e: unknown) => e instanceof ServerError && e.message === 'user 9 does not exist');

  // The node goes away: what was waiting fails, and the next login resumes.
  const waiting = connection.request({ msgid: 16, conv: 'd:1:2' });
  last().drop();
  await assert.rejects(waiting, (e: unknown) => e instanceof ConnectionLost);
  assert.equal(connection.state, 'reconnecting');
  await sleep(40);
  assert.equal(FakeSocket.all.length, 2);
  last().open();
  const relogin = last().sent[0]!;
  assert.equal(relogin['since'], 5);
  last().push({ msgid: 2, errno: 0, seq: relogin['seq'], id: 1, name: 'alice' });
  assert.equal(connection.state, 'connected');
  assert.deepEqual(
    log.logins.map((l) => l.resumed),
    [false, true],
  );
  assert.deepEqual(log.states, ['connected', 'reconnecting', 'connected']);
  connection.stop(true, 1);
  assert.deepEqual(last().sent[last().sent.length - 1], { msgid: 3, id: 1 });
});

test('a refused first login rejects with the server’s words; no retry', async () => {
  FakeSocket.all = [];
  const { handlers } = recorder();
  const connection = new Connection('ws://x/ws', { id: 1, secret: { password: 'bad', remember: null } }, handlers, FAST);
  const started = connection.start();
  last().open();
  last().push({ msgid: 2, errno: 1, errmsg: 'id or password is invalid!', seq: last().sent[0]!['seq'] });
  await assert.rejects(started, (e: unknown) => e instanceof ServerError && e.message === 'id or password is invalid!');
  await sleep(40);
  assert.equal(FakeSocket.all.length, 1);
});

test('no server: "cannot reach the server"', async () => {
  FakeSocket.all = [];
  const { handlers } = recorder();
  const connection = new Connection('ws://x/ws', { id: 1, secret: { password: 'pw', remember: null } }, handlers, FAST);
  const started = connection.start();
  last().drop();
  await assert.rejects(started, (e: unknown) => e instanceof Error && e.message === UNREACHABLE);
});

test('a busy server at re-login: keep trying, and say why', async () => {
  FakeSocket.all = [];
  const { log, handlers } = recorder();
  const connection = new Connection('ws://x/ws', { id: 1, secret: { password: 'pw', remember: null } }, handlers, FAST);
  const started = connection.start();
  last().open();
  last().push({ msgid: 2, errno: 0, seq: last().sent[0]!['seq'], id: 1, name: 'alice' });
  await started;
  last().drop();
  await sleep(40);
  last().open();
  last().push({ msgid: 2, errno: 8, errmsg: 'the user service is unavailable', seq: last().sent[0]!['seq'] });
  assert.deepEqual(log.problems, ['the user service is unavailable']);
  await sleep(40);
  assert.equal(FakeSocket.all.length, 3);
  connection.stop(false, 1);
});

test('backoff grows from 0.5 s to 5 s, with jitter', () => {
  assert.equal(backoffDelay(0, DEFAULT_TIMINGS, 0.5), 500);
  assert.equal(backoffDelay(1, DEFAULT_TIMINGS, 0.5), 1000);
  assert.equal(backoffDelay(10, DEFAULT_TIMINGS, 0.5), 5000);
  assert.equal(backoffDelay(0, DEFAULT_TIMINGS, 0), 375);
});

test('a socket that never opens is given up, and tried again', async () => {
  FakeSocket.all = [];
  const { handlers } = recorder();
  const connection = new Connection('ws://x/ws', { id: 1, secret: { password: 'pw', remember: null } }, handlers, { ...FAST, openTimeoutMs: 20 });
  const started = connection.start();
  await assert.rejects(started, (e: unknown) => e instanceof Error && e.message === UNREACHABLE);
  // After a first login, the same is a reconnect.
  FakeSocket.all = [];
  const again = new Connection('ws://x/ws', { id: 1, secret: { password: 'pw', remember: null } }, handlers, { ...FAST, openTimeoutMs: 20 });
  const ok = again.start();
  last().open();
  last().push({ msgid: 2, errno: 0, seq: last().sent[0]!['seq'], id: 1, name: 'alice' });
  await ok;
  last().drop();
  await sleep(30); // backoff, then a socket that hangs
  assert.equal(FakeSocket.all.length, 2);
  await sleep(60);
  assert.ok(FakeSocket.all.length >= 3, 'tried again after the open timeout');
  assert.equal(again.state, 'reconnecting');
  again.stop(false, 1);
});

test('pings keep the connection; a server that stops answering is left', async () => {
  FakeSocket.all = [];
  const { log, handlers } = recorder();
  const connection = new Connection('ws://x/ws', { id: 1, secret: { password: 'pw', remember: null } }, handlers, {
    ...FAST,
    pingEveryMs: 10,
    pongWaitMs: 30,
  });
  const started = connection.start();
  last().open();
  last().push({ msgid: 2, errno: 0, seq: last().sent[0]!['seq'], id: 1, name: 'alice' });
  await started;
  // The server answers each ping for a while.
  for (let i = 0; i < 5; i++) {
    await sleep(15);
    if (last().sent.some((f) => f['msgid'] === 13)) {
      last().sent = [];
      last().push({ msgid: 14 });
    }
  }
  assert.equal(connection.state, 'connected');
  // Then it falls silent.
  await sleep(80);
  assert.equal(log.states.includes('reconnecting'), true);
  connection.stop(false, 1);
});

test('a login given a session token logs in again with it, not the password', async () => {
  FakeSocket.all = [];
  const { handlers } = recorder();
  const connection = new Connection(
    'ws://x/ws',
    { id: 1, secret: { password: 'pw', remember: 'web: Chrome on Linux' } },
    handlers,
    FAST,
  );
  const started = connection.start();
  last().open();
  const login = last().sent[0]!;
  assert.equal(login['password'], 'pw');
  assert.equal(login['remember'], true);
  assert.equal(login['device'], 'web: Chrome on Linux');
  last().push({ msgid: 2, errno: 0, seq: login['seq'], id: 1, name: 'alice', token: 'ccs_t' });
  assert.equal((await started).token, 'ccs_t');
  last().drop();
  await sleep(40);
  last().open();
  const relogin = last().sent[0]!;
  assert.equal(relogin['token'], 'ccs_t');
  assert.equal(relogin['password'], undefined, 'the password is not kept');
  connection.stop(false, 1);
});
