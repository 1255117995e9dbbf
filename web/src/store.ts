// The client's state: conversations, their messages, read and delivery
// marks, typing, and how everything the server says is merged into it.
// Pure (no socket, no DOM, no timers; `now` is passed in), so the rules
// that matter most are unit-tested: a message is never shown twice (merged
// by mid, then by cseq), never lost (a sent one stays until the server
// numbers it), and lists are ordered the same way however frames arrive.

import {
  type Chat,
  type ConversationEntry,
  type Friend,
  type Group,
  type Member,
  directConv,
  groupConv,
  parseConv,
  peerOf,
} from './protocol';
import { parseServerTime } from './time';

export type TickState = 'sending' | 'sent' | 'delivered' | 'read' | 'failed';

export interface Message {
  /** The server's id; for a message sent here, known before it is sent
   *  (`ME-CMID`, as the gateway names a chat that carries a cmid). */
  mid: string;
  conv: string;
  /** Its number in the conversation; null while it is still being sent. */
  cseq: number | null;
  from: number;
  fromName: string;
  text: string;
  time: string;
  /** `time` parsed (ms), or null when it is not a time. */
  at: number | null;
  mine: boolean;
  /** Sent from this tab and not yet numbered by the server. */
  pending: 'sending' | 'failed' | null;
  /** The client id it was sent with (to send it again). */
  cmid: string | null;
  /** Insertion order: keeps unnumbered messages in the order they were written. */
  order: number;
}

export interface Conversation {
  conv: string;
  kind: 'direct' | 'group';
  peer: number | null;
  groupId: number | null;
  name: string;
  /** The name came from the roster (a chat's sender name does not replace it). */
  named: boolean;
  /** One-to-one: whether the other party is online. */
  online: boolean;
  /** A friend or a group of mine (not only someone who wrote to me). */
  inRoster: boolean;
  description: string;
  members: Map<number, Member>;
  /** Oldest first: numbered messages by cseq, then those being sent. */
  messages: Message[];
  byMid: Map<string, Message>;
  byCseq: Map<number, Message>;
  /** The newest page of history was fetched (when first opened). */
  historyLoaded: boolean;
  /** History has messages older than the oldest here. */
  hasOlder: boolean;
  /** The newest message as the conversation list (msgid 17) saw it. */
  listLast: Message | null;
  /** My read mark (cseq). */
  readUpto: number;
  /** The unread count the server last told, and the cseq it counted up to. */
  baseUnread: number;
  baseCseq: number;
  /** How far the other party has read / received (one-to-one only). */
  peerRead: number;
  peerDelivered: number;
  /** Last activity (ms) and a tie-breaker for activity within one second. */
  activity: number;
  touch: number;
  /** Position in the server's conversation list (latest first). */
  listRank: number;
  typing: Map<number, { name: string; until: number }>;
}

/** How long "typing…" shows after the last typing event. */
export const TYPING_SHOWN_MS = 4000;

export class Store {
  readonly me: number;
  myName: string;
  readonly conversations = new Map<string, Conversation>();
  private order = 0;
  private touches = 0;

  constructor(me: number, myName: string) {
    this.me = me;
    this.myName = myName;
  }

  // ---- conversations --------------------------------------------------------

  /** The conversation, created (empty) if it is new. */
  conversation(conv: string): Conversation | null {
    const existing = this.conversations.get(conv);
    if (existing) return existing;
    const ref = parseConv(conv);
    if (!ref) return null;
    let peer: number | null = null;
    if (ref.kind === 'direct') {
      peer = peerOf(conv, this.me);
      if (peer === null) return null; // not mine
    }
    const created: Conversation = {
      conv,
      kind: ref.kind,
      peer,
      groupId: ref.kind === 'group' ? ref.group : null,
      name: ref.kind === 'group' ? `Group ${ref.group}` : `User ${peer}`,
      named: false,
      online: false,
      inRoster: false,
      description: '',
      members: new Map(),
      messages: [],
      byMid: new Map(),
      byCseq: new Map(),
      historyLoaded: false,
      hasOlder: true,
      listLast: null,
      readUpto: 0,
      baseUnread: 0,
      baseCseq: 0,
      peerRead: 0,
      peerDelivered: 0,
      activity: 0,
      touch: 0,
      listRank: Number.MAX_SAFE_INTEGER,
      typing: new Map(),
    };
    this.conversations.set(conv, created);
    return created;
  }

  /** Whom the user blocks (from msgid 21). */
  blocked = new Set<number>();

  /** Friends and groups (login ack, roster pages, msgid 21). */
  applyRoster(friends: Friend[], groups: Group[]): void {
    for (const friend of friends) {
      if (friend.id === this.me) continue;
      const c = this.conversation(directConv(this.me, friend.id));
      if (!c) continue;
      c.name = friend.name;
      c.named = true;
      c.online = friend.online;
      c.inRoster = true;
    }
    for (const group of groups) {
      const c = this.conversation(groupConv(group.id));
      if (!c) continue;
      c.name = group.name;
      c.named = true;
      c.inRoster = true;
      c.description = group.description;
      c.members = new Map(group.members.map((m) => [m.id, m]));
    }
  }

  /** A friend's or fellow member's presence changed (msgid 22). False when
   *  nobody here shows them: the roster should be asked for (a new friend,
   *  a new member). */
  applyPresence(id: number, online: boolean): boolean {
    let known = false;
    for (const c of this.conversations.values()) {
      if (c.kind === 'direct' && c.peer === id && c.inRoster) {
        c.online = online;
        known = true;
      }
      const member = c.members.get(id);
      if (member) {
        member.online = online;
        known = true;
      }
    }
    return known;
  }

  /** The conversation list (msgid 17): read marks, unread counts, the last
   *  message of each, and the order. */
  applyConversationList(entries: ConversationEntry[]): void {
    entries.forEach((entry, rank) => {
      const c = this.conversation(entry.conv);
      if (!c) return;
      c.listRank = rank;
      c.readUpto = Math.max(c.readUpto, entry.read);
      c.peerRead = Math.max(c.peerRead, entry.peerRead);
      const last = entry.last ? this.toMessage(entry.last) : null;
      if (last) {
        c.listLast = last;
        if (last.at !== null) c.activity = Math.max(c.activity, last.at);
        this.learnName(c, last);
      }
      const counted = Math.max(entry.read, last?.cseq ?? 0);
      // The server counted up to `counted`; what is here beyond it is counted
      // live (see unread()), so a list that trails history counts nothing twice.
      if (counted >= c.baseCseq) {
        c.baseCseq = counted;
        c.baseUnread = entry.unread;
      }
    });
  }

  /** A conversation started here (a friend added, a group created or
   *  joined) goes to the top of the list. */
  touchConversation(conv: string, now: number): Conversation | null {
    const c = this.conversation(conv);
    if (c) {
      c.activity = Math.max(c.activity, now);
      c.touch = ++this.touches;
    }
    return c;
  }

  /** Conversations, the most recently active first; those without messages
   *  after them, by name. */
  sortedConversations(): Conversation[] {
    return [...this.conversations.values()].sort(
      (a, b) =>
        b.activity - a.activity ||
        b.touch - a.touch ||
        a.listRank - b.listRank ||
        a.name.localeCompare(b.name) ||
        a.conv.localeCompare(b.conv),
    );
  }

  // ---- messages -------------------------------------------------------------

  private toMessage(chat: Chat): Message {
    const mid = chat.mid !== '' ? chat.mid : chat.cseq !== null ? `${chat.conv}#${chat.cseq}` : `local-${this.order}`;
    return {
      mid,
      conv: chat.conv,
      cseq: chat.cseq,
      from: chat.from,
      fromName: chat.from === this.me ? this.myName : chat.fromName,
      text: chat.text,
      time: chat.time,
      at: parseServerTime(chat.time),
      mine: chat.from === this.me,
      pending: null,
      cmid: null,
      order: this.order++,
    };
  }

  private learnName(c: Conversation, m: Message): void {
    if (c.kind === 'direct' && !c.named && m.from === c.peer && m.fromName) c.name = m.fromName;
  }

  /**
   * Merges chats from any source (live, offline, history, carbon copies of
   * my own from other tabs). Returns the messages that are new here; one
   * already known (same mid, or same cseq) is merged, not added, and a
   * message of mine that was being sent becomes sent when it comes back.
   */
  addChats(chats: Chat[], now: number): Message[] {
    const added: Message[] = [];
    const touched = new Set<Conversation>();
    for (const chat of chats) {
      const c = this.conversation(chat.conv);
      if (!c) continue;
      const incoming = this.toMessage(chat);
      const known =
        c.byMid.get(incoming.mid) ?? (incoming.cseq !== null ? c.byCseq.get(incoming.cseq) : undefined);
      if (known) {
        if (known.cseq === null && incoming.cseq !== null) {
          this.number(c, known, incoming.cseq);
          touched.add(c);
        }
        continue;
      }
      const newest = c.messages[c.messages.length - 1];
      c.messages.push(incoming);
      c.byMid.set(incoming.mid, incoming);
      if (incoming.cseq !== null) c.byCseq.set(incoming.cseq, incoming);
      touched.add(c);
      added.push(incoming);
      this.learnName(c, incoming);
      // Activity moves only for what is newer than everything here (not
      // for an older page of history).
      if (!newest || compareMessages(incoming, newest) > 0) {
        c.activity = Math.max(c.activity, incoming.at ?? now);
        c.touch = ++this.touches;
      }
      if (!incoming.mine) c.typing.delete(incoming.from);
    }
    for (const c of touched) c.messages.sort(compareMessages);
    return added;
  }

  private number(c: Conversation, m: Message, cseq: number): void {
    m.cseq = cseq;
    m.pending = null;
    c.byCseq.set(cseq, m);
  }

  /** A message written here, shown at once as "sending". */
  addOutgoing(conv: string, text: string, cmid: string, now: number, time: string): Message | null {
    const c = this.conversation(conv);
    if (!c) return null;
    const m: Message = {
      mid: `${this.me}-${cmid}`,
      conv,
      cseq: null,
      from: this.me,
      fromName: this.myName,
      text,
      time,
      at: now,
      mine: true,
      pending: 'sending',
      cmid,
      order: this.order++,
    };
    c.messages.push(m);
    c.byMid.set(m.mid, m);
    c.activity = Math.max(c.activity, now);
    c.touch = ++this.touches;
    return m;
  }

  /** The server accepted a message sent here: it has its number now. */
  confirmSent(conv: string, localMid: string, mid: string | null, cseq: number | null): void {
    const c = this.conversations.get(conv);
    const m = c?.byMid.get(localMid);
    if (!c || !m) return;
    if (mid && mid !== m.mid) {
      const other = c.byMid.get(mid);
      if (other && other !== m) {
        // Its copy came back first (history or another path): keep that one.
        this.removeMessage(c, m);
        return;
      }
      c.byMid.delete(m.mid);
      m.mid = mid;
      c.byMid.set(mid, m);
    }
    if (cseq === null) {
      m.pending = null;
      return;
    }
    const other = c.byCseq.get(cseq);
    if (other && other !== m) {
      this.removeMessage(c, m);
      return;
    }
    this.number(c, m, cseq);
    c.messages.sort(compareMessages);
  }

  private removeMessage(c: Conversation, m: Message): void {
    c.messages = c.messages.filter((x) => x !== m);
    if (c.byMid.get(m.mid) === m) c.byMid.delete(m.mid);
    if (m.cseq !== null && c.byCseq.get(m.cseq) === m) c.byCseq.delete(m.cseq);
  }

  markFailed(conv: string, mid: string): void {
    const m = this.conversations.get(conv)?.byMid.get(mid);
    if (m && m.cseq === null) m.pending = 'failed';
  }

  /** A failed message being tried again. */
  markSending(conv: string, mid: string): Message | null {
    const m = this.conversations.get(conv)?.byMid.get(mid);
    if (!m || m.cseq !== null) return null;
    m.pending = 'sending';
    return m;
  }

  /** Messages sent here that the server has not numbered yet, oldest first. */
  unsent(): Message[] {
    const all: Message[] = [];
    for (const c of this.conversations.values()) {
      for (const m of c.messages) if (m.pending === 'sending') all.push(m);
    }
    return all.sort((a, b) => a.order - b.order);
  }

  /** The history page that was asked for arrived. */
  applyHistoryPage(
    conv: string,
    chats: Chat[],
    more: boolean,
    direction: 'latest' | 'older' | 'newer',
    now: number,
  ): Message[] {
    const added = this.addChats(chats, now);
    const c = this.conversations.get(conv);
    if (c) {
      if (direction === 'latest') {
        c.historyLoaded = true;
        c.hasOlder = more;
      } else if (direction === 'older') {
        c.hasOlder = more && chats.length > 0;
      }
    }
    return added;
  }

  // ---- marks ----------------------------------------------------------------

  newestCseq(conv: string): number {
    const c = this.conversations.get(conv);
    if (!c) return 0;
    for (let i = c.messages.length - 1; i >= 0; i--) {
      const cseq = c.messages[i]?.cseq;
      if (cseq !== null && cseq !== undefined) return cseq;
    }
    return 0;
  }

  /** Where catching up starts: after the last cseq up to which this
   *  conversation holds every message, looking back at most `window`
   *  numbers from the newest. Not simply the newest: in a group, a message
   *  numbered earlier may reach the inbox later than one numbered after it,
   *  and another device may have taken it meanwhile; asking for what comes
   *  after the newest would never fill that gap. A number history never
   *  had (a chat refused altogether) is asked for again at each catch-up,
   *  within the window. */
  catchUpAfter(conv: string, window: number): number {
    const c = this.conversations.get(conv);
    if (!c) return 0;
    const cseqs = [...new Set(c.messages.flatMap((m) => (m.cseq === null ? [] : [m.cseq])))].sort(
      (a, b) => a - b,
    );
    const newest = cseqs[cseqs.length - 1];
    if (newest === undefined) return 0;
    const floor = newest - window;
    let prev: number | null = null;
    for (const cseq of cseqs) {
      if (prev !== null && cseq > floor && cseq !== prev + 1) return Math.max(prev, floor);
      prev = cseq;
    }
    return newest;
  }

  oldestCseq(conv: string): number {
    const c = this.conversations.get(conv);
    const first = c?.messages.find((m) => m.cseq !== null);
    return first?.cseq ?? 0;
  }

  /** The newest cseq of a message from someone else (for DELIVERED). */
  newestReceived(conv: string): number {
    const c = this.conversations.get(conv);
    if (!c) return 0;
    for (let i = c.messages.length - 1; i >= 0; i--) {
      const m = c.messages[i];
      if (m && !m.mine && m.cseq !== null) return m.cseq;
    }
    return 0;
  }

  /** A read mark: mine (this or another device) or the other party's. */
  applyRead(conv: string, reader: number, upto: number): void {
    const c = this.conversations.get(conv);
    if (!c) return;
    if (reader === this.me) c.readUpto = Math.max(c.readUpto, upto);
    else if (c.kind === 'direct') c.peerRead = Math.max(c.peerRead, upto);
  }

  /** The answer to my own READ: the server's count of what is still unread. */
  applyReadReply(conv: string, read: number, unread: number): void {
    const c = this.conversations.get(conv);
    if (!c) return;
    c.readUpto = Math.max(c.readUpto, read);
    if (read >= c.baseCseq) {
      // Everything here beyond `read` is counted live.
      c.baseCseq = read;
      c.baseUnread = Math.max(0, unread - this.countUnreadAfter(c, read));
    }
  }

  applyDelivered(conv: string, receiver: number, upto: number): void {
    const c = this.conversations.get(conv);
    if (c && c.kind === 'direct' && receiver !== this.me) c.peerDelivered = Math.max(c.peerDelivered, upto);
  }

  private countUnreadAfter(c: Conversation, cseq: number): number {
    let n = 0;
    for (const m of c.messages) if (!m.mine && m.cseq !== null && m.cseq > cseq) n++;
    return n;
  }

  /** Unread messages: what the server counted (unless read since), plus
   *  what arrived here beyond what it counted and beyond my read mark. */
  unread(conv: string): number {
    const c = this.conversations.get(conv);
    if (!c) return 0;
    const base = c.readUpto >= c.baseCseq ? 0 : c.baseUnread;
    return base + this.countUnreadAfter(c, Math.max(c.baseCseq, c.readUpto));
  }

  ticks(m: Message): TickState | null {
    if (!m.mine) return null;
    if (m.pending === 'failed') return 'failed';
    if (m.cseq === null) return 'sending';
    const c = this.conversations.get(m.conv);
    if (c && c.kind === 'direct') {
      if (c.peerRead >= m.cseq) return 'read';
      if (c.peerDelivered >= m.cseq) return 'delivered';
    }
    return 'sent';
  }

  /** The newest message, loaded or as the conversation list saw it. */
  lastMessage(conv: string): Message | null {
    const c = this.conversations.get(conv);
    if (!c) return null;
    const loaded = c.messages[c.messages.length - 1] ?? null;
    if (!c.listLast) return loaded;
    if (!loaded) return c.listLast;
    return compareMessages(loaded, c.listLast) >= 0 ? loaded : c.listLast;
  }

  // ---- typing ---------------------------------------------------------------

  setTyping(conv: string, id: number, name: string, now: number): void {
    if (id === this.me) return;
    const c = this.conversations.get(conv);
    if (c) c.typing.set(id, { name, until: now + TYPING_SHOWN_MS });
  }

  /** Names of those typing now; forgets those who stopped. */
  typingNames(conv: string, now: number): string[] {
    const c = this.conversations.get(conv);
    if (!c) return [];
    const names: string[] = [];
    for (const [id, t] of c.typing) {
      if (t.until <= now) c.typing.delete(id);
      else names.push(t.name);
    }
    return names;
  }
}

/** Numbered messages by cseq, then unnumbered ones in the order written. */
export function compareMessages(a: Message, b: Message): number {
  if (a.cseq !== null && b.cseq !== null) return a.cseq - b.cseq || a.order - b.order;
  if (a.cseq !== null) return -1;
  if (b.cseq !== null) return 1;
  return a.order - b.order;
}

/** "NAME is typing…", "A and B are typing…", "Several people are typing…". */
export function typingText(names: string[]): string {
  if (names.length === 0) return '';
  if (names.length === 1) return `${names[0]} is typing…`;
  if (names.length === 2) return `${names[0]} and ${names[1]} are typing…`;
  return 'Several people are typing…';
}
