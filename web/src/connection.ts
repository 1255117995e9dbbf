// One logged-in device's WebSocket: logs in, answers requests by `seq`,
// acknowledges inbox entries (msgid 12, within 100 ms), pings (msgid 13,
// every 5 s), notices a server silent after a ping, and reconnects with backoff, logging
// in again with `since` = the last inbox entry it has, so the server resends
// only what it does not. What to fetch after a reconnect is the app's job
// (the `loggedIn` handler is told `resumed`).

import {
  type Chat,
  type JsonObject,
  type LoginAck,
  type Secret,
  type ServerFailure,
  type ServerFrame,
  ERRNO_BAD_LOGIN,
  ERRNO_THROTTLED,
  decodeFrame,
  encode,
} from './protocol';

export type ConnectionState = 'connecting' | 'connected' | 'reconnecting' | 'closed';

/** The server answered with an error (`errmsg` is shown as it is). */
export class ServerError extends Error {
  readonly errno: number;
  readonly retryAfter: number | null;
  constructor(failure: ServerFailure) {
    super(failure.errmsg);
    this.name = 'ServerError';
    this.errno = failure.errno;
    this.retryAfter = failure.retryAfter;
  }
}

/** The connection went away before an answer came (or was not there). */
export class ConnectionLost extends Error {
  constructor(message = 'not connected to the server') {
    super(message);
    this.name = 'ConnectionLost';
  }
}

/** A request the server did not answer in time (the connection is up). */
export class RequestTimeout extends Error {
  constructor() {
    super('the server did not answer in time; try again');
    this.name = 'RequestTimeout';
  }
}

export const UNREACHABLE = 'cannot reach the server';

export interface ConnectionHandlers {
  state(state: ConnectionState): void;
  /** After every successful login; frames that follow are in `frame`. */
  loggedIn(ack: LoginAck, resumed: boolean): void;
  /** Every frame that is not the answer to a request. */
  frame(frame: ServerFrame): void;
  /** Logging in again was refused for good (e.g. the password changed). */
  fatal(error: ServerError): void;
  /** Something the user should know (e.g. why logging in again failed). */
  problem(message: string): void;
}

export interface Timings {
  ackEveryMs: number;
  pingEveryMs: number;
  /** No frame for this long after a ping: the connection is dead. */
  pongWaitMs: number;
  /** A socket not open by then is given up (a black-holed address). */
  openTimeoutMs: number;
  loginTimeoutMs: number;
  requestTimeoutMs: number;
  backoffMinMs: number;
  backoffMaxMs: number;
}

export const DEFAULT_TIMINGS: Timings = {
  ackEveryMs: 100,
  pingEveryMs: 5000,
  pongWaitMs: 7000,
  openTimeoutMs: 10000,
  loginTimeoutMs: 15000,
  requestTimeoutMs: 30000,
  backoffMinMs: 500,
  backoffMaxMs: 5000,
};

/** The delay before reconnect attempt `attempt` (0-based), with jitter so
 *  that many tabs dropped by one node do not come back in one burst. */
export function backoffDelay(attempt: number, t: Timings, random: number): number {
  const base = Math.min(t.backoffMaxMs, t.backoffMinMs * 2 ** Math.min(attempt, 16));
  return Math.round(base * (0.75 + 0.5 * random));
}

interface Waiting {
  resolve(body: JsonObject): void;
  reject(error: Error): void;
  timer: ReturnType<typeof setTimeout>;
}

export class Connection {
  state: ConnectionState = 'connecting';
  private socket: WebSocket | null = null;
  private nextSeq = 1;
  private loginSeq = 0;
  private readonly waiting = new Map<number, Waiting>();
  /** The newest inbox entry received, and the newest acknowledged. */
  private rseqSeen = 0;
  private rseqAcked = 0;
  /** Group chats come from the groups' logs, acknowledged per group by
   *  their number in it (`cseq`). */
  private groupSeen = new Map<string, number>();
  private groupAcked = new Map<string, number>();
  private attempt = 0;
  private everLoggedIn = false;
  private stopped = false;
  private pingTimer: ReturnType<typeof setTimeout> | null = null;
  private deadTimer: ReturnType<typeof setTimeout> | null = null;
  private ackTimer: ReturnType<typeof setTimeout> | null = null;
  private retryTimer: ReturnType<typeof setTimeout> | null = null;
  private loginTimer: ReturnType<typeof setTimeout> | null = null;
  private first: { resolve(ack: LoginAck): void; reject(e: Error): void } | null = null;

  constructor(
    private readonly url: string,
    private credentials: { id: number; secret: Secret },
    private readonly handlers: ConnectionHandlers,
    private readonly timings: Timings = DEFAULT_TIMINGS,
  ) {}

  /** Connects and logs in once: resolves with the login ack, or rejects
   *  with the server's refusal or "cannot reach the server". From then on
   *  the connection keeps itself up until stop(). */
  start(): Promise<LoginAck> {
    return new Promise((resolve, reject) => {
      this.first = { resolve, reject };
      this.open();
    });
  }

  /** Sends a request and resolves with the answer's body (rejects with a
   *  ServerError, or ConnectionLost if the connection is not up or drops). */
  request(body: JsonObject): Promise<JsonObject> {
    if (this.state !== 'connected' || !this.socket) return Promise.reject(new ConnectionLost());
    const seq = this.nextSeq++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiting.delete(seq);
        reject(new RequestTimeout());
      }, this.timings.requestTimeoutMs);
      this.waiting.set(seq, { resolve, reject, timer });
      this.write({ ...body, seq });
    });
  }

  /** Sends a frame that wants no answer; false when not connected. */
  notify(body: JsonObject): boolean {
    if (this.state !== 'connected') return false;
    return this.write(body);
  }

  /** Ends the session: logs out (if connected) and closes for good. */
  stop(logout: boolean, me: number): void {
    if (this.stopped) return;
    if (logout && this.state === 'connected') this.write(encode.logout(me));
    this.stopped = true;
    this.setState('closed');
    this.teardown(new ConnectionLost('logged out'));
    if (this.retryTimer) clearTimeout(this.retryTimer);
  }

  /** Try now instead of waiting out the backoff (e.g. the browser came online). */
  retryNow(): void {
    if (this.stopped || this.state !== 'reconnecting' || this.socket) return;
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.retryTimer = null;
    this.open();
  }

  // ---- the socket -------------------------------------------------------------

  private open(): void {
    let socket: WebSocket;
    try {
      socket = new WebSocket(this.url);
    } catch {
      this.lost(false);
      return;
    }
    this.socket = socket;
    let opened = false;
    // Until the login is answered, one timer: for the socket to open, then
    // for the login ack.
    this.loginTimer = setTimeout(() => this.drop(0, false), this.timings.openTimeoutMs);
    socket.onopen = () => {
      opened = true;
      if (this.loginTimer) clearTimeout(this.loginTimer);
      this.loginSeq = this.nextSeq++;
      this.write({ ...encode.login(this.credentials.id, this.credentials.secret, this.rseqSeen), seq: this.loginSeq });
      this.loginTimer = setTimeout(() => this.drop(), this.timings.loginTimeoutMs);
    };
    socket.onmessage = (event: MessageEvent) => {
      if (typeof event.data !== 'string') return;
      this.heard();
      const frame = decodeFrame(event.data);
      if (frame) this.receive(frame);
    };
    socket.onclose = () => {
      if (this.socket === socket) this.lost(opened);
    };
    // An error is always followed by close, which does the work.
    socket.onerror = () => {};
  }

  private write(body: JsonObject): boolean {
    if (!this.socket || this.socket.readyState !== WebSocket.OPEN) return false;
    this.socket.send(JSON.stringify(body));
    return true;
  }

  private receive(frame: ServerFrame): void {
    if (frame.kind === 'login' && frame.seq === this.loginSeq) {
      this.loginAnswered(frame.ack, frame.failure);
      return;
    }
    if (frame.kind === 'reply' && frame.seq !== null) {
      const waiting = this.waiting.get(frame.seq);
      if (waiting) {
        this.waiting.delete(frame.seq);
        clearTimeout(waiting.timer);
        if (frame.failure) waiting.reject(new ServerError(frame.failure));
        else waiting.resolve(frame.body);
        return;
      }
    }
    if (frame.kind === 'pong') return;
    this.handlers.frame(frame);
    // Acknowledged only once handled: what the server drops from the inbox
    // is what this page has.
    if (frame.kind === 'chat') this.seen(frame.chat);
  }

  /** A chat this page has: to acknowledge (an inbox entry by `rseq`, a
   *  group log entry by its group and `cseq`). */
  private seen(chat: Chat): void {
    if (chat.rseq !== null) {
      this.rseqSeen = Math.max(this.rseqSeen, chat.rseq);
    } else if (chat.conv.startsWith('g:') && chat.cseq !== null && chat.mid !== '') {
      this.groupSeen.set(chat.conv, Math.max(this.groupSeen.get(chat.conv) ?? 0, chat.cseq));
    } else {
      return;
    }
    this.armAck();
  }

  private loginAnswered(ack: LoginAck | null, failure: ServerFailure | null): void {
    if (this.loginTimer) clearTimeout(this.loginTimer);
    this.loginTimer = null;
    if (!ack) {
      const error = new ServerError(failure ?? { errno: 10, errmsg: 'the login answer was malformed', retryAfter: null });
      if (this.first) {
        this.first.reject(error);
        this.first = null;
        this.stopped = true;
        this.setState('closed');
        this.teardown(error);
      } else if (error.errno === ERRNO_BAD_LOGIN) {
        this.stopped = true;
        this.setState('closed');
        this.teardown(error);
        this.handlers.fatal(error);
      } else {
        // Busy, throttled or a service down: keep trying.
        const wait = error.errno === ERRNO_THROTTLED && error.retryAfter ? error.retryAfter * 1000 : 0;
        this.handlers.problem(error.message);
        this.drop(wait);
      }
      return;
    }
    // Given a token: logging in again uses it, and the password is not
    // kept.
    if (ack.token) this.credentials = { id: this.credentials.id, secret: { token: ack.token } };
    const resumed = this.everLoggedIn;
    this.everLoggedIn = true;
    this.attempt = 0;
    this.rseqAcked = this.rseqSeen; // `since` acknowledged those
    this.setState('connected');
    this.armPing();
    if (this.first) {
      this.first.resolve(ack);
      this.first = null;
    }
    this.handlers.loggedIn(ack, resumed);
    for (const chat of ack.offline) this.seen(chat);
    this.armAck();
  }

  // The timers are armed from socket events (a frame, the login ack), not
  // run as intervals: a hidden tab's browser throttles chains of timers
  // hard (to once a minute), timers started by events much less.

  /** A frame came: the connection lives; the next ping is due in a while. */
  private heard(): void {
    if (this.deadTimer) clearTimeout(this.deadTimer);
    this.deadTimer = null;
    this.armPing();
  }

  private armPing(): void {
    if (this.pingTimer || this.state !== 'connected') return;
    this.pingTimer = setTimeout(() => {
      this.pingTimer = null;
      if (!this.write(encode.ping())) return;
      this.deadTimer ??= setTimeout(() => this.drop(), this.timings.pongWaitMs);
    }, this.timings.pingEveryMs);
  }

  /** Group log entries not acknowledged yet, per group. */
  private groupsBehind(): [string, number][] {
    return [...this.groupSeen].filter(([conv, cseq]) => cseq > (this.groupAcked.get(conv) ?? 0));
  }

  /** Inbox and group log entries are acknowledged together, a moment after
   *  they came. */
  private armAck(): void {
    if (this.ackTimer || (this.rseqSeen <= this.rseqAcked && this.groupsBehind().length === 0)) return;
    this.ackTimer = setTimeout(() => {
      this.ackTimer = null;
      if (this.rseqSeen > this.rseqAcked && this.write(encode.ack(this.rseqSeen))) {
        this.rseqAcked = this.rseqSeen;
      }
      for (const [conv, cseq] of this.groupsBehind()) {
        if (this.write(encode.groupAck(conv, cseq))) this.groupAcked.set(conv, cseq);
      }
    }, this.timings.ackEveryMs);
  }

  private stopTimers(): void {
    for (const timer of [this.pingTimer, this.deadTimer, this.ackTimer]) if (timer) clearTimeout(timer);
    this.pingTimer = this.deadTimer = this.ackTimer = null;
  }

  /** Gives up on the current socket at once (it may take long to close by
   *  itself) and reconnects, after `minWait` at least. */
  private drop(minWait = 0, opened = true): void {
    const socket = this.socket;
    if (!socket) return;
    this.socket = null;
    socket.onopen = socket.onmessage = socket.onclose = socket.onerror = null;
    try {
      socket.close();
    } catch {
      // already closing
    }
    this.afterClose(opened, minWait);
  }

  private lost(opened: boolean): void {
    this.socket = null;
    this.afterClose(opened, 0);
  }

  private afterClose(opened: boolean, minWait: number): void {
    this.teardown(new ConnectionLost('the connection to the server was lost'));
    if (this.stopped) return;
    if (this.first) {
      // The first login: say so on the login screen instead of retrying.
      this.first.reject(new ConnectionLost(opened ? 'the server closed the connection; try again' : UNREACHABLE));
      this.first = null;
      this.stopped = true;
      this.setState('closed');
      return;
    }
    this.setState('reconnecting');
    const delay = Math.max(minWait, backoffDelay(this.attempt++, this.timings, Math.random()));
    this.retryTimer = setTimeout(() => {
      this.retryTimer = null;
      this.open();
    }, delay);
  }

  private teardown(error: Error): void {
    this.stopTimers();
    if (this.loginTimer) clearTimeout(this.loginTimer);
    this.loginTimer = null;
    if (this.socket) {
      const socket = this.socket;
      this.socket = null;
      socket.onopen = socket.onmessage = socket.onclose = socket.onerror = null;
      try {
        socket.close();
      } catch {
        // already closing
      }
    }
    const waiting = [...this.waiting.values()];
    this.waiting.clear();
    for (const w of waiting) {
      clearTimeout(w.timer);
      w.reject(error);
    }
  }

  private setState(state: ConnectionState): void {
    if (this.state === state) return;
    this.state = state;
    this.handlers.state(state);
  }
}

/** One-shot registration on a connection of its own: resolves with the new
 *  id, rejects with the server's errmsg or "cannot reach the server". */
export function register(url: string, name: string, password: string, timeoutMs = 15000): Promise<number> {
  return new Promise((resolve, reject) => {
    let socket: WebSocket;
    try {
      socket = new WebSocket(url);
    } catch {
      reject(new ConnectionLost(UNREACHABLE));
      return;
    }
    let opened = false;
    let settled = false;
    const finish = (outcome: () => void) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.onclose = socket.onmessage = socket.onerror = null;
      socket.close();
      outcome();
    };
    const timer = setTimeout(
      () => finish(() => reject(new ConnectionLost('the server did not answer in time'))),
      timeoutMs,
    );
    socket.onopen = () => {
      opened = true;
      socket.send(JSON.stringify({ ...encode.register(name, password), seq: 1 }));
    };
    socket.onmessage = (event: MessageEvent) => {
      const frame = typeof event.data === 'string' ? decodeFrame(event.data) : null;
      if (!frame) return;
      if (frame.kind === 'register') {
        if (frame.id !== null) {
          const id = frame.id;
          finish(() => resolve(id));
        } else {
          const failure = frame.failure ?? { errno: 10, errmsg: 'registration failed', retryAfter: null };
          finish(() => reject(new ServerError(failure)));
        }
      } else if (frame.kind === 'reply' && frame.failure) {
        const failure = frame.failure;
        finish(() => reject(new ServerError(failure)));
      }
    };
    socket.onclose = () =>
      finish(() =>
        reject(new ConnectionLost(opened ? 'the server closed the connection; try again' : UNREACHABLE)),
      );
    socket.onerror = () => {};
  });
}
