// One logged-in session of the page: ties the connection, the store and
// the views together. What the server says goes into the store, the views
// render the store, and what the user does becomes requests.
//
// After every login (the first and each reconnect) the session catches up:
// messages it was writing are sent again (same cmid: the server keeps one),
// each conversation it holds fetches history after the newest message it
// has, and the conversation list and roster are read again. Everything is
// merged by mid/cseq in the store, so nothing is lost or shown twice.

import { Connection, type ConnectionState, ConnectionLost, ServerError } from './connection';
import {
  type JsonObject,
  type LoginAck,
  type Secret,
  type ServerFrame,
  decodeChatReply,
  decodeConversations,
  decodeHistory,
  decodeRoster,
  decodeSearch,
  directConv,
  encode,
  groupConv,
} from './protocol';
import { type NotificationApi, Notifier, shouldNotify } from './notify';
import { forget, save, savedSessionEnded } from './saved';
import { type Message, Store, TYPING_SHOWN_MS } from './store';
import { formatServerTime } from './time';
import { ConversationView } from './ui/conversation';
import { h } from './ui/dom';
import { Sidebar } from './ui/sidebar';
import { Toast } from './ui/toast';

/** Extra roster refreshes (a stranger wrote, someone new came online) at
 *  most this often. Presence itself is pushed (msgid 22): nothing polls. */
const ROSTER_SOON_MS = 3_000;
const DELIVERED_EVERY_MS = 1_000;
const TYPING_EVERY_MS = 2_000;
const PAGE = 50;
/** Search hits per page. */
const SEARCH_PAGE = 20;
/** Pages of history a search hit may page back through to show its message. */
const REVEAL_PAGES = 20;
const CATCH_UP_PAGE = 200;
/** A catch-up looks for gaps among this many of a conversation's newest numbers. */
const GAP_WINDOW = 1_000;
/** After a failed history request, wait this long before asking again. */
const HISTORY_RETRY_MS = 5_000;
/** The history service keeps group memberships this long (5 s by default),
 *  so it may refuse a group's history just after joining it. */
const JOIN_SETTLE_MS = 10_000;
const SETTLE_RETRY_MS = 1_000;
const ERRNO_FORBIDDEN = 4;
/** History trails live delivery a little: look again this long after a reconnect. */
const SECOND_CATCH_UP_MS = 3_000;

export interface SessionEnd {
  /** Shown on the login screen (e.g. why logging in again was refused). */
  message: string | null;
}

export class ChatSession {
  private store: Store | null = null;
  private sidebar: Sidebar | null = null;
  private view: ConversationView | null = null;
  private readonly toast = new Toast();
  private readonly connection: Connection;
  private shell: HTMLElement | null = null;
  private selected: string | null = null;
  private renderQueued = false;
  private generation = 0;
  private timers: ReturnType<typeof setInterval>[] = [];
  private ended = false;

  /** Per conversation: DELIVERED wanted / sent, READ sent, typing sent. */
  private readonly deliveredWanted = new Map<string, number>();
  private readonly deliveredSent = new Map<string, number>();
  private readonly readSent = new Map<string, number>();
  private readonly readRetryAt = new Map<string, number>();
  private readonly readError = new Map<string, string>();
  private readonly typingSentAt = new Map<string, number>();
  private readonly loadingHistory = new Set<string>();
  private readonly historyRetryAt = new Map<string, number>();
  private readonly historyError = new Map<string, string>();
  private readonly inFlight = new Set<string>();
  /** Groups created or joined here, and when. */
  private readonly joinedAt = new Map<string, number>();
  private lastRosterError = '';
  private rosterAskedAt = 0;
  private deliveredTimer: ReturnType<typeof setTimeout> | null = null;
  private readonly notifier = new Notifier(
    () => (window as unknown as { Notification?: NotificationApi }).Notification,
    (conv) => this.open(conv),
  );

  constructor(
    url: string,
    credentials: { id: number; secret: Secret },
    private readonly root: HTMLElement,
    private readonly onEnd: (end: SessionEnd) => void,
  ) {
    this.connection = new Connection(url, credentials, {
      state: (state) => this.connectionState(state),
      loggedIn: (ack, resumed) => this.loggedIn(ack, resumed),
      frame: (frame) => this.frame(frame),
      fatal: (error) => {
        // Its token no longer signs anyone in: not on a reload either.
        forget();
        this.end(`You were logged out: ${error.message}`);
      },
      problem: (message) => this.toast.show(message),
    });
  }

  /** Logs in; resolves once the main screen shows, rejects with the reason
   *  to show on the login screen. */
  async start(): Promise<void> {
    await this.connection.start();
  }

  // ---- connection events -----------------------------------------------------

  private loggedIn(ack: LoginAck, resumed: boolean): void {
    if (ack.token) save({ id: ack.id, token: ack.token });
    if (!this.store) this.mount(ack);
    const store = this.store!;
    store.myName = ack.name;
    store.applyRoster(ack.friends, ack.groups);
    this.received(store.addChats(ack.offline, Date.now()));
    this.readSent.clear();
    this.armDelivered();
    this.scheduleRender();
    void this.catchUp(++this.generation, resumed);
  }

  private connectionState(state: ConnectionState): void {
    this.sidebar?.setConnectionState(state);
    this.shell?.setAttribute('data-conn', state);
  }

  private frame(frame: ServerFrame): void {
    const store = this.store;
    if (!store) return;
    const now = Date.now();
    switch (frame.kind) {
      case 'chat': {
        const added = store.addChats([frame.chat], now);
        this.received(added);
        this.notify(added);
        // Someone not in my roster wrote: they may have just added me as a
        // friend (friendship goes both ways); the roster says, with presence.
        if (added.some((m) => !m.mine && store.conversations.get(m.conv)?.inRoster === false)) {
          this.refreshRosterSoon();
        }
        break;
      }
      case 'roster-page':
        store.applyRoster(frame.page.friends, frame.page.groups);
        break;
      case 'read':
        store.applyRead(frame.conv, frame.reader, frame.upto);
        break;
      case 'delivered':
        store.applyDelivered(frame.conv, frame.id, frame.upto);
        break;
      case 'signed-out':
        forget();
        this.end(`You were logged out: ${frame.reason}`);
        return;
      case 'presence':
        if (!store.applyPresence(frame.id, frame.online)) this.refreshRosterSoon();
        break;
      case 'typing':
        store.setTyping(frame.conv, frame.id, frame.name, now);
        // Hidden again on time, unless another event comes first.
        setTimeout(() => this.scheduleRender(), TYPING_SHOWN_MS + 20);
        break;
      case 'reply':
        // An error for a request that had no seq (typing, delivered): say it.
        if (frame.failure) this.toast.show(frame.failure.errmsg);
        return;
      default:
        return;
    }
    this.scheduleRender();
  }

  /** Live messages where the user is not looking: a notification each,
   *  if they allowed them. */
  private notify(added: Message[]): void {
    const visible = document.visibilityState === 'visible';
    for (const m of added) {
      if (!shouldNotify(m, this.selected, visible)) continue;
      this.notifier.show(m, this.store?.conversations.get(m.conv)?.name ?? m.fromName);
    }
  }

  /** New messages from any source: those from others are "delivered" here. */
  private received(added: Message[]): void {
    for (const m of added) {
      if (m.mine || m.cseq === null) continue;
      const c = this.store?.conversations.get(m.conv);
      if (c?.kind !== 'direct') continue;
      this.deliveredWanted.set(m.conv, Math.max(this.deliveredWanted.get(m.conv) ?? 0, m.cseq));
      this.armDelivered();
    }
    if (added.length > 0) this.scheduleRender();
  }

  // ---- catching up after a login --------------------------------------------

  private async catchUp(generation: number, resumed: boolean): Promise<void> {
    const store = this.store!;
    const current = () => generation === this.generation && !this.ended;
    for (const m of store.unsent()) this.transmit(m);
    // One failing part (say, history of one group) does not stop the rest.
    const problems: string[] = [];
    const attempt = async (work: () => Promise<void>) => {
      try {
        await work();
      } catch (error) {
        if (!(error instanceof ConnectionLost)) problems.push(messageOf(error));
      }
    };
    if (resumed) {
      for (const c of [...store.conversations.values()]) {
        if (!current()) return;
        await attempt(() => this.fetchNewer(c.conv, current));
      }
    }
    if (!current()) return;
    await Promise.all([attempt(() => this.refreshConversations()), this.refreshRoster()]);
    if (!current()) return;
    if (this.selected) this.loadLatestIfNeeded(this.selected);
    if (problems[0] !== undefined) this.toast.show(problems[0]);
    if (resumed) {
      setTimeout(async () => {
        for (const c of [...store.conversations.values()]) {
          if (!current()) return;
          await this.fetchNewer(c.conv, current).catch(() => {});
        }
      }, SECOND_CATCH_UP_MS);
    }
  }

  /** History after the first gap among the newest messages here, else
   *  after the newest (none here: nothing to fill). */
  private async fetchNewer(conv: string, current: () => boolean): Promise<void> {
    const store = this.store!;
    let after = store.catchUpAfter(conv, GAP_WINDOW);
    for (let page = 0; after > 0 && page < 50 && current(); page++) {
      const body = await this.connection.request(encode.history(conv, { after, limit: CATCH_UP_PAGE }));
      const history = decodeHistory(body);
      this.received(store.applyHistoryPage(conv, history.messages, history.more, 'newer', Date.now()));
      const top = Math.max(after, ...history.messages.map((m) => m.cseq ?? 0));
      if (!history.more || top <= after) break;
      after = top;
    }
  }

  private async refreshConversations(): Promise<void> {
    const body = await this.connection.request(encode.conversations(200));
    this.store?.applyConversationList(decodeConversations(body));
    this.scheduleRender();
  }

  private async refreshRoster(): Promise<void> {
    try {
      const body = await this.connection.request(encode.roster());
      const roster = decodeRoster(body);
      this.store?.applyRoster(roster.friends, roster.groups);
      if (this.store && roster.blocked) this.store.blocked = new Set(roster.blocked);
      this.lastRosterError = '';
      this.scheduleRender();
    } catch (error) {
      // Asked again at every reconnect: say a failure once.
      if (error instanceof ServerError && error.message !== this.lastRosterError) {
        this.lastRosterError = error.message;
        this.toast.show(error.message);
      }
    }
  }

  /** A roster refresh now, unless one was asked for in the last few seconds. */
  private refreshRosterSoon(): void {
    const now = Date.now();
    if (now - this.rosterAskedAt < ROSTER_SOON_MS) return;
    this.rosterAskedAt = now;
    void this.refreshRoster();
  }

  // ---- history ----------------------------------------------------------------

  private loadLatestIfNeeded(conv: string): void {
    const c = this.store?.conversations.get(conv);
    if (c && !c.historyLoaded) void this.loadHistory(conv, 'latest');
  }

  /** Opens `conv` at the message numbered `cseq` (a search hit): pages
   *  back through its history until that message is loaded, at most
   *  REVEAL_PAGES pages, then scrolls to it. */
  private async reveal(conv: string, cseq: number | null): Promise<void> {
    const store = this.store;
    if (!store || !store.conversation(conv)) return;
    this.open(conv);
    if (cseq === null) return;
    for (let pages = 0, waits = 0; pages < REVEAL_PAGES && waits < 100; ) {
      const c = store.conversations.get(conv);
      if (!c || this.selected !== conv || c.byCseq.has(cseq)) break;
      if (c.historyLoaded && !c.hasOlder) break;
      if (this.loadingHistory.has(conv) || this.connection.state !== 'connected') {
        waits++;
        await new Promise((resolve) => setTimeout(resolve, 100));
        continue;
      }
      pages++;
      await this.loadHistory(conv, c.historyLoaded ? 'older' : 'latest');
    }
    if (this.selected !== conv) return;
    this.render();
    this.view?.reveal(cseq);
  }

  private async loadHistory(conv: string, direction: 'latest' | 'older'): Promise<void> {
    const store = this.store;
    if (!store || this.loadingHistory.has(conv) || this.connection.state !== 'connected') return;
    if ((this.historyRetryAt.get(conv) ?? 0) > Date.now()) return;
    if (!store.conversations.get(conv)?.historyLoaded) direction = 'latest';
    const before = direction === 'older' ? store.oldestCseq(conv) : 0;
    if (before === 0) direction = 'latest';
    this.loadingHistory.add(conv);
    if (direction === 'older' && this.view?.current === conv) this.view.setLoadingOlder(true);
    try {
      const body = await this.connection.request(encode.history(conv, { before, limit: PAGE }));
      const page = decodeHistory(body);
      this.received(store.applyHistoryPage(conv, page.messages, page.more, direction, Date.now()));
      this.historyError.delete(conv);
      if (this.view?.current === conv) this.view.setHistoryTrouble(false);
    } catch (error) {
      // Lost with the connection: the next login asks again.
      if (error instanceof ConnectionLost) return;
      const settling = this.joinSettling(conv, error);
      const wait = settling ? SETTLE_RETRY_MS : HISTORY_RETRY_MS;
      this.historyRetryAt.set(conv, Date.now() + wait);
      if (!settling && this.view?.current === conv) this.view.setHistoryTrouble(true);
      setTimeout(() => this.scheduleRender(), wait + 50);
      // Retried while the conversation is open: say each failure once.
      const message = messageOf(error);
      if (!settling && this.historyError.get(conv) !== message) {
        this.historyError.set(conv, message);
        this.toast.show(message);
      }
    } finally {
      this.loadingHistory.delete(conv);
      if (this.view?.current === conv) this.view.setLoadingOlder(false);
      this.scheduleRender();
    }
  }

  // ---- marks --------------------------------------------------------------------

  /** The open conversation, while the page is visible, is read up to its
   *  newest message. */
  private markReadIfSeen(): void {
    const store = this.store;
    const conv = this.selected;
    if (!store || !conv || document.visibilityState !== 'visible' || this.connection.state !== 'connected') return;
    const c = store.conversations.get(conv);
    const newest = store.newestCseq(conv);
    if (!c || newest <= c.readUpto || newest <= (this.readSent.get(conv) ?? 0)) return;
    if ((this.readRetryAt.get(conv) ?? 0) > Date.now()) return;
    this.readSent.set(conv, newest);
    this.connection
      .request(encode.read(conv, newest))
      .then((body) => {
        const read = typeof body['read'] === 'number' ? body['read'] : newest;
        const unread = typeof body['unread'] === 'number' ? body['unread'] : 0;
        store.applyReadReply(conv, read, unread);
        this.readError.delete(conv);
        this.scheduleRender();
      })
      .catch((error: unknown) => {
        this.readSent.delete(conv);
        if (error instanceof ConnectionLost) return; // the next login's render asks again
        const settling = this.joinSettling(conv, error);
        const wait = settling ? SETTLE_RETRY_MS : HISTORY_RETRY_MS;
        this.readRetryAt.set(conv, Date.now() + wait);
        setTimeout(() => this.scheduleRender(), wait + 50);
        const message = messageOf(error);
        if (!settling && this.readError.get(conv) !== message) {
          this.readError.set(conv, message);
          this.toast.show(message);
        }
      });
  }

  /** DELIVERED goes out at most once a second per conversation, armed by
   *  the frame that brought the messages (not an interval: see connection.ts). */
  private armDelivered(): void {
    if (this.deliveredTimer || this.ended) return;
    this.deliveredTimer = setTimeout(() => {
      this.deliveredTimer = null;
      this.flushDelivered();
    }, DELIVERED_EVERY_MS);
  }

  private flushDelivered(): void {
    // Not connected: the next login's catch-up arms it again.
    if (this.connection.state !== 'connected') return;
    for (const [conv, upto] of this.deliveredWanted) {
      if (upto > (this.deliveredSent.get(conv) ?? 0) && this.connection.notify(encode.delivered(conv, upto))) {
        this.deliveredSent.set(conv, upto);
      }
    }
  }

  // ---- sending ------------------------------------------------------------------

  private send(conv: string, text: string): void {
    const store = this.store;
    if (!store) return;
    const now = Date.now();
    const m = store.addOutgoing(conv, text, newClientId(), now, formatServerTime(now));
    if (!m) return;
    this.typingSentAt.delete(conv);
    this.scheduleRender();
    this.transmit(m);
  }

  /** Sends a message written here; one that cannot go now goes after the
   *  next login (the same cmid: the server keeps one copy). */
  private transmit(m: Message): void {
    const store = this.store;
    if (!store || !m.cmid || this.inFlight.has(m.mid) || this.connection.state !== 'connected') return;
    const body = encode.chat(store.me, m.conv, m.text, m.cmid);
    if (!body) return;
    const localMid = m.mid;
    this.inFlight.add(localMid);
    this.connection
      .request(body)
      .then((reply) => {
        const result = decodeChatReply(reply);
        store.confirmSent(m.conv, localMid, result.mid, result.cseq);
        const missed = result.failed[0];
        if (missed) this.toast.show(`Not delivered to everyone: ${missed.errmsg}`);
      })
      .catch((error: unknown) => {
        if (error instanceof ConnectionLost) return; // sent again after the next login
        store.markFailed(m.conv, localMid);
        this.toast.show(messageOf(error));
      })
      .finally(() => {
        this.inFlight.delete(localMid);
        this.scheduleRender();
      });
  }

  private retry(conv: string, mid: string): void {
    const m = this.store?.markSending(conv, mid);
    if (!m) return;
    this.scheduleRender();
    this.transmit(m);
  }

  private typing(conv: string): void {
    const now = Date.now();
    if (now - (this.typingSentAt.get(conv) ?? 0) < TYPING_EVERY_MS) return;
    if (this.connection.notify(encode.typing(conv))) this.typingSentAt.set(conv, now);
  }

  // ---- roster actions ------------------------------------------------------------

  /** A change to friends or groups from the conversation's details: says
   *  what happened, or why not. */
  private async manage(work: () => Promise<string>): Promise<void> {
    try {
      this.toast.show(await work());
    } catch (error) {
      this.toast.show(messageOf(error));
    }
    this.scheduleRender();
  }

  private async removeFriend(conv: string): Promise<string> {
    const c = this.store?.conversations.get(conv);
    if (!c || c.peer === null) throw new Error('Not a one-to-one conversation.');
    await this.request(encode.removeFriend(c.peer));
    c.inRoster = false;
    c.online = false;
    return `${c.name} is no longer a friend.`;
  }

  private async block(conv: string, on: boolean): Promise<string> {
    const c = this.store?.conversations.get(conv);
    if (!c || c.peer === null) throw new Error('Not a one-to-one conversation.');
    await this.request(encode.block(c.peer, on));
    if (on) this.store?.blocked.add(c.peer);
    else this.store?.blocked.delete(c.peer);
    return on ? `${c.name} can no longer write to you.` : `${c.name} can write to you again.`;
  }

  private async leaveGroup(conv: string): Promise<string> {
    const c = this.store?.conversations.get(conv);
    if (!c || c.groupId === null) throw new Error('Not a group.');
    await this.request(encode.leaveGroup(c.groupId));
    c.inRoster = false;
    c.members = new Map();
    return `You left ${c.name}.`;
  }

  private async renameGroup(conv: string, name: string): Promise<string> {
    const c = this.store?.conversations.get(conv);
    if (!c || c.groupId === null) throw new Error('Not a group.');
    await this.request(encode.renameGroup(c.groupId, name));
    await this.refreshRoster();
    return `The group is now ${name}.`;
  }

  private async addFriend(id: number): Promise<string> {
    const store = this.store!;
    if (id === store.me) throw new Error('That is your own id.');
    await this.request(encode.addFriend(store.me, id));
    await this.refreshRoster();
    const c = store.touchConversation(directConv(store.me, id), Date.now());
    this.scheduleRender();
    return `${c?.name ?? `User ${id}`} (id ${id}) is now a friend.`;
  }

  private async createGroup(name: string, description: string): Promise<{ text: string; id: number }> {
    const store = this.store!;
    const body = await this.request(encode.createGroup(store.me, name, description));
    const id = typeof body['groupid'] === 'number' ? body['groupid'] : null;
    if (id === null) throw new Error('The server did not say the new group’s id.');
    this.joinedAt.set(groupConv(id), Date.now());
    const c = store.touchConversation(groupConv(id), Date.now());
    if (c && !c.named) {
      c.name = name;
      c.description = description;
    }
    await this.refreshRoster();
    this.scheduleRender();
    return { text: `Group created. Its id is ${id}: others join with it.`, id };
  }

  private async joinGroup(id: number): Promise<string> {
    const store = this.store!;
    await this.request(encode.joinGroup(store.me, id));
    this.joinedAt.set(groupConv(id), Date.now());
    await this.refreshRoster();
    const c = store.touchConversation(groupConv(id), Date.now());
    this.scheduleRender();
    return `You joined ${c?.name ?? `group ${id}`} (id ${id}).`;
  }

  /**
   * Whether `error` is the history service not knowing yet that I am in a
   * group I just created or joined (it keeps memberships for a few
   * seconds): worth a quiet retry, not an error on screen.
   */
  private joinSettling(conv: string, error: unknown): boolean {
    const joined = this.joinedAt.get(conv);
    return (
      joined !== undefined &&
      Date.now() - joined < JOIN_SETTLE_MS &&
      error instanceof ServerError &&
      error.errno === ERRNO_FORBIDDEN
    );
  }

  /** A request from a form: its failure is shown next to the form (the
   *  server's errmsg as it is). */
  private async request(body: JsonObject): Promise<JsonObject> {
    try {
      return await this.connection.request(body);
    } catch (error) {
      if (error instanceof ConnectionLost) throw new Error('Not connected to the server; try again in a moment.');
      throw error;
    }
  }

  // ---- navigation and rendering --------------------------------------------------

  private open(conv: string | null): void {
    this.selected = conv;
    this.view?.show(conv);
    this.shell?.setAttribute('data-view', conv ? 'conversation' : 'list');
    if (conv) {
      this.loadLatestIfNeeded(conv);
      this.view?.focusComposer();
    }
    this.scheduleRender();
  }

  private scheduleRender(): void {
    if (this.renderQueued || this.ended) return;
    this.renderQueued = true;
    // A microtask, not an animation frame: a hidden tab renders too (and
    // marks nothing read while hidden).
    queueMicrotask(() => {
      this.renderQueued = false;
      this.render();
    });
  }

  private render(): void {
    const store = this.store;
    if (!store || this.ended) return;
    const now = Date.now();
    const visible = document.visibilityState === 'visible';
    this.sidebar?.render(this.selected, now, visible ? this.selected : null);
    this.view?.render(now);
    this.markReadIfSeen();
    let unread = 0;
    for (const conv of store.conversations.keys()) if (!(visible && conv === this.selected)) unread += store.unread(conv);
    document.title = unread > 0 ? `(${unread}) clusterchat` : 'clusterchat';
  }

  private mount(ack: LoginAck): void {
    const store = new Store(ack.id, ack.name);
    this.store = store;
    this.sidebar = new Sidebar(store, {
      open: (conv) => this.open(conv),
      logout: () => {
        forget();
        this.end(null, true);
      },
      logoutEverywhere: () => void this.logoutEverywhere(),
      notifications: () => this.notifier.permission,
      enableNotifications: async () => {
        await this.notifier.ask();
        this.scheduleRender();
      },
      addFriend: (id) => this.addFriend(id),
      createGroup: (name, description) => this.createGroup(name, description),
      joinGroup: (id) => this.joinGroup(id),
      search: async (query, offset) => decodeSearch(await this.request(encode.search(query, offset, SEARCH_PAGE))),
      reveal: (conv, cseq) => void this.reveal(conv, cseq),
    });
    this.sidebar.setConnectionState(this.connection.state);
    this.view = new ConversationView(store, {
      send: (conv, text) => this.send(conv, text),
      typing: (conv) => this.typing(conv),
      loadOlder: (conv) => void this.loadHistory(conv, 'older'),
      retry: (conv, mid) => this.retry(conv, mid),
      back: () => this.open(null),
      removeFriend: (conv) => void this.manage(() => this.removeFriend(conv)),
      leaveGroup: (conv) => void this.manage(() => this.leaveGroup(conv)),
      renameGroup: (conv, name) => void this.manage(() => this.renameGroup(conv, name)),
      block: (conv, on) => void this.manage(() => this.block(conv, on)),
    });
    const banner = h('div', { class: 'conn-banner', 'aria-hidden': 'true' }, 'reconnecting…');
    this.shell = h(
      'div',
      { class: 'shell', 'data-view': 'list', 'data-conn': this.connection.state },
      this.sidebar.element,
      this.view.element,
      banner,
      this.toast.element,
    );
    this.shell.addEventListener('keydown', (event) => {
      if (event.key === 'Escape' && this.selected && window.matchMedia('(max-width: 700px)').matches) {
        this.open(null);
      }
    });
    this.root.replaceChildren(this.shell);
    this.timers.push(
      // Day labels ("Today") and list times age.
      setInterval(() => this.scheduleRender(), 60_000),
    );
    document.addEventListener('visibilitychange', this.onVisibility);
    window.addEventListener('online', this.onOnline);
    window.addEventListener('storage', this.onStorage);
  }

  /** Another tab logged out (its token is ended): this one follows. */
  private readonly onStorage = (event: StorageEvent) => {
    if (this.store && savedSessionEnded(event, this.store.me)) this.end('You logged out in another tab.', true);
  };

  /** Ends every session of this user, on every device; the server's msgid
   *  23 then ends this one too. */
  private async logoutEverywhere(): Promise<void> {
    try {
      await this.connection.request(encode.logoutEverywhere());
    } catch (error) {
      this.toast.show(messageOf(error));
    }
  }

  private readonly onVisibility = () => this.scheduleRender();
  private readonly onOnline = () => this.connection.retryNow();

  /** Logs out (or was logged out) and goes back to the login screen. */
  private end(message: string | null, logout = false): void {
    if (this.ended) return;
    this.ended = true;
    this.connection.stop(logout, this.store?.me ?? 0);
    for (const t of this.timers) clearInterval(t);
    if (this.deliveredTimer) clearTimeout(this.deliveredTimer);
    document.removeEventListener('visibilitychange', this.onVisibility);
    window.removeEventListener('online', this.onOnline);
    window.removeEventListener('storage', this.onStorage);
    document.title = 'clusterchat';
    this.onEnd({ message });
  }
}

/** A chat's client id: 32 hex digits (the server accepts [A-Za-z0-9_-]{1,64}). */
function newClientId(): string {
  const bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
