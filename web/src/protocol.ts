// The gateway's protocol as the web client speaks it: message numbers, the
// frames it sends (encode*) and the frames it reads (decodeFrame and the
// decode* helpers for reply bodies). Pure: no socket, no DOM.
//
// Everything read from the server is untrusted text: decoders check each
// field's type and fall back to a harmless default instead of throwing, so
// one odd frame cannot stop the client.

export const MSG = {
  LOGIN: 1,
  LOGIN_ACK: 2,
  LOGOUT: 3,
  REGISTER: 4,
  REGISTER_ACK: 5,
  CHAT: 6,
  ADD_FRIEND: 7,
  CREATE_GROUP: 8,
  JOIN_GROUP: 9,
  GROUP_CHAT: 10,
  REPLY: 11,
  ACK: 12,
  PING: 13,
  PONG: 14,
  ROSTER_PAGE: 15,
  HISTORY: 16,
  CONVERSATIONS: 17,
  READ: 18,
  TYPING: 19,
  DELIVERED: 20,
  ROSTER: 21,
  PRESENCE: 22,
  LOGOUT_EVERYWHERE: 23,
  PASSWORD: 24,
  REMOVE_FRIEND: 25,
  LEAVE_GROUP: 26,
  GROUP_MEMBERS: 27,
  RENAME_GROUP: 28,
  BLOCK: 29,
  UNBLOCK: 30,
  SEARCH: 31,
} as const;

/** The errno of a login ack refused for a wrong id or password. */
export const ERRNO_BAD_LOGIN = 1;
/** errno: too many attempts; `retry_after` says when to try again. */
export const ERRNO_THROTTLED = 7;

export type JsonObject = Record<string, unknown>;

export interface Friend {
  id: number;
  name: string;
  online: boolean;
}

export interface Member {
  id: number;
  name: string;
  online: boolean;
  creator: boolean;
}

export interface Group {
  id: number;
  name: string;
  description: string;
  members: Member[];
}

/** A chat as the server sends it (live, offline, history, or a carbon copy). */
export interface Chat {
  /** The server's message id ("" if the frame had none). */
  mid: string;
  conv: string;
  /** The message's number in its conversation (null if the frame had none). */
  cseq: number | null;
  from: number;
  fromName: string;
  text: string;
  /** As sent: "YYYY-MM-DD HH:MM:SS" in UTC when the server added it. */
  time: string;
  /** The receiver's inbox position, to acknowledge (null: not an inbox entry). */
  rseq: number | null;
}

/** What a login proves who it is with: a password (and, with `remember`,
 *  the device name a session token is asked for) or that token. */
export type Secret = { password: string; remember: string | null } | { token: string };

export interface LoginAck {
  id: number;
  name: string;
  friends: Friend[];
  groups: Group[];
  offline: Chat[];
  rosterMore: boolean;
  /** The session token this login holds (asked for with `remember`, or
   *  the one it logged in with). */
  token: string | null;
}

export interface RosterPage {
  friends: Friend[];
  groups: Group[];
  more: boolean;
  /** Whom the user blocks (msgid 21 only; null in a page). */
  blocked: number[] | null;
}

export interface ConversationEntry {
  conv: string;
  peer: number | null;
  groupId: number | null;
  last: Chat | null;
  read: number;
  unread: number;
  peerRead: number;
}

export interface HistoryPage {
  conv: string;
  messages: Chat[];
  more: boolean;
}

/** A message a search found, and where its words are in its text:
 *  `[start, end)` in Unicode code points. */
export interface SearchHit {
  chat: Chat;
  marks: [number, number][];
}

export interface SearchPage {
  hits: SearchHit[];
  more: boolean;
}

export interface ServerFailure {
  errno: number;
  errmsg: string;
  retryAfter: number | null;
}

/** Every frame the server may send, decoded. */
export type ServerFrame =
  | { kind: 'login'; seq: number | null; ack: LoginAck | null; failure: ServerFailure | null }
  | { kind: 'register'; seq: number | null; id: number | null; failure: ServerFailure | null }
  | { kind: 'reply'; seq: number | null; body: JsonObject; failure: ServerFailure | null }
  | { kind: 'chat'; chat: Chat }
  | { kind: 'pong' }
  | { kind: 'roster-page'; page: RosterPage }
  | { kind: 'read'; conv: string; reader: number; upto: number }
  | { kind: 'typing'; conv: string; id: number; name: string }
  | { kind: 'delivered'; conv: string; id: number; upto: number }
  | { kind: 'presence'; id: number; online: boolean }
  | { kind: 'signed-out'; reason: string }
  | { kind: 'unknown'; body: JsonObject };

// ---- conversations ---------------------------------------------------------

/** `d:LOW:HIGH`, the one-to-one conversation of two users. */
export function directConv(a: number, b: number): string {
  return `d:${Math.min(a, b)}:${Math.max(a, b)}`;
}

export function groupConv(group: number): string {
  return `g:${group}`;
}

export type ConvRef =
  | { kind: 'direct'; low: number; high: number }
  | { kind: 'group'; group: number };

export function parseConv(conv: string): ConvRef | null {
  const direct = /^d:([1-9]\d*):([1-9]\d*)$/.exec(conv);
  if (direct) {
    const low = Number(direct[1]);
    const high = Number(direct[2]);
    return low < high ? { kind: 'direct', low, high } : null;
  }
  const group = /^g:([1-9]\d*)$/.exec(conv);
  return group ? { kind: 'group', group: Number(group[1]) } : null;
}

/** The other party of a one-to-one conversation, seen from `me`. */
export function peerOf(conv: string, me: number): number | null {
  const ref = parseConv(conv);
  if (!ref || ref.kind !== 'direct') return null;
  if (ref.low === me) return ref.high;
  if (ref.high === me) return ref.low;
  return null;
}

// ---- field access ------------------------------------------------------------

function isObject(value: unknown): value is JsonObject {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function int(object: JsonObject, key: string): number | null {
  const value = object[key];
  return typeof value === 'number' && Number.isSafeInteger(value) ? value : null;
}

function text(object: JsonObject, key: string): string | null {
  const value = object[key];
  return typeof value === 'string' ? value : null;
}

function list(object: JsonObject, key: string): unknown[] {
  const value = object[key];
  return Array.isArray(value) ? value : [];
}

/** Roster and offline entries come as JSON text inside JSON (the classic
 *  encoding) or, from newer requests, as plain objects: accept both. */
function entry(value: unknown): JsonObject | null {
  if (typeof value === 'string') {
    try {
      const parsed: unknown = JSON.parse(value);
      return isObject(parsed) ? parsed : null;
    } catch {
      return null;
    }
  }
  return isObject(value) ? value : null;
}

function failureOf(object: JsonObject): ServerFailure | null {
  const errno = int(object, 'errno') ?? 0;
  if (errno === 0) return null;
  return {
    errno,
    errmsg: text(object, 'errmsg') ?? `the server refused (errno ${errno})`,
    retryAfter: int(object, 'retry_after'),
  };
}

// ---- decoding ----------------------------------------------------------------

export function decodeFriend(value: unknown): Friend | null {
  const object = entry(value);
  const id = object && int(object, 'id');
  if (!object || id === null) return null;
  return {
    id,
    name: text(object, 'name') ?? `User ${id}`,
    online: object['online'] === true || object['state'] === 'online',
  };
}

export function decodeMember(value: unknown): Member | null {
  const object = entry(value);
  const id = object && int(object, 'id');
  if (!object || id === null) return null;
  return {
    id,
    name: text(object, 'name') ?? `User ${id}`,
    online: object['online'] === true || object['state'] === 'online',
    creator: object['creator'] === true || object['role'] === 'creator',
  };
}

export function decodeGroup(value: unknown): Group | null {
  const object = entry(value);
  const id = object && int(object, 'id');
  if (!object || id === null) return null;
  const members = list(object, 'members').length > 0 ? list(object, 'members') : list(object, 'users');
  return {
    id,
    name: text(object, 'name') ?? text(object, 'groupname') ?? `Group ${id}`,
    description: text(object, 'description') ?? text(object, 'groupdesc') ?? '',
    members: members.map(decodeMember).filter((m): m is Member => m !== null),
  };
}

/** A chat frame (msgid 6 or 10), or null if it is not one. */
export function decodeChat(value: unknown): Chat | null {
  const object = entry(value);
  if (!object) return null;
  const msgid = int(object, 'msgid');
  const from = int(object, 'id');
  const body = text(object, 'msg');
  if ((msgid !== MSG.CHAT && msgid !== MSG.GROUP_CHAT) || from === null || body === null) return null;
  let conv = text(object, 'conv');
  if (conv === null || parseConv(conv) === null) {
    // Older frames carry no conversation: it follows from the addresses.
    const to = int(object, 'toid');
    const group = int(object, 'groupid');
    if (msgid === MSG.GROUP_CHAT && group !== null) conv = groupConv(group);
    else if (msgid === MSG.CHAT && to !== null && to !== from) conv = directConv(from, to);
    else return null;
  }
  return {
    mid: text(object, 'mid') ?? '',
    conv,
    cseq: int(object, 'cseq'),
    from,
    fromName: text(object, 'name') ?? `User ${from}`,
    text: body,
    time: text(object, 'time') ?? '',
    rseq: int(object, 'rseq'),
  };
}

function decodeAll<T>(values: unknown[], decode: (v: unknown) => T | null): T[] {
  return values.map(decode).filter((v): v is T => v !== null);
}

export function decodeLoginAck(object: JsonObject): LoginAck | null {
  const id = int(object, 'id');
  if (id === null) return null;
  return {
    id,
    name: text(object, 'name') ?? `User ${id}`,
    friends: decodeAll(list(object, 'friends'), decodeFriend),
    groups: decodeAll(list(object, 'groups'), decodeGroup),
    offline: decodeAll(list(object, 'offlinemsg'), decodeChat),
    rosterMore: object['roster_more'] === true,
    token: text(object, 'token'),
  };
}

/** The body of a msgid 21 ROSTER reply (or a msgid 15 page). */
export function decodeRoster(object: JsonObject): RosterPage {
  return {
    friends: decodeAll(list(object, 'friends'), decodeFriend),
    groups: decodeAll(list(object, 'groups'), decodeGroup),
    more: object['more'] === true,
    blocked: Array.isArray(object['blocked'])
      ? list(object, 'blocked').filter((id): id is number => typeof id === 'number' && Number.isSafeInteger(id))
      : null,
  };
}

export function decodeHistory(object: JsonObject): HistoryPage {
  return {
    conv: text(object, 'conv') ?? '',
    messages: decodeAll(list(object, 'messages'), decodeChat),
    more: object['more'] === true,
  };
}

/** The body of a msgid 31 SEARCH reply. */
export function decodeSearch(object: JsonObject): SearchPage {
  const hits: SearchHit[] = [];
  for (const value of list(object, 'hits')) {
    const chat = decodeChat(value);
    if (!chat || !isObject(value)) continue;
    const marks: [number, number][] = [];
    for (const mark of list(value, 'marks')) {
      if (!Array.isArray(mark) || mark.length !== 2) continue;
      const [start, end] = mark as unknown[];
      if (Number.isSafeInteger(start) && Number.isSafeInteger(end) && (start as number) < (end as number)) {
        marks.push([start as number, end as number]);
      }
    }
    hits.push({ chat, marks });
  }
  return { hits, more: object['more'] === true };
}

/** `text` cut at `marks` (code points, as the server counts them): the
 *  pieces in order, each marked or not. Marks out of order, overlapping or
 *  past the end are clipped, never thrown on. */
export function markedPieces(text: string, marks: [number, number][]): { text: string; marked: boolean }[] {
  const points = Array.from(text);
  const pieces: { text: string; marked: boolean }[] = [];
  let at = 0;
  for (const [start, end] of [...marks].sort((a, b) => a[0] - b[0])) {
    const from = Math.max(start, at);
    const to = Math.min(end, points.length);
    if (from >= to) continue;
    if (from > at) pieces.push({ text: points.slice(at, from).join(''), marked: false });
    pieces.push({ text: points.slice(from, to).join(''), marked: true });
    at = to;
  }
  if (at < points.length) pieces.push({ text: points.slice(at).join(''), marked: false });
  return pieces;
}

export function decodeConversations(object: JsonObject): ConversationEntry[] {
  const entries: ConversationEntry[] = [];
  for (const value of list(object, 'conversations')) {
    if (!isObject(value)) continue;
    const conv = text(value, 'conv');
    if (conv === null || parseConv(conv) === null) continue;
    entries.push({
      conv,
      peer: int(value, 'peer'),
      groupId: int(value, 'groupid'),
      last: decodeChat(value['last']),
      read: int(value, 'read') ?? 0,
      unread: int(value, 'unread') ?? 0,
      peerRead: int(value, 'peer_read') ?? 0,
    });
  }
  return entries;
}

/** What a reply to a chat says: where it was numbered, and who it missed. */
export function decodeChatReply(object: JsonObject): {
  mid: string | null;
  cseq: number | null;
  failed: ServerFailure[];
} {
  return {
    mid: text(object, 'mid'),
    cseq: int(object, 'cseq'),
    failed: list(object, 'failed')
      .filter(isObject)
      .map((f) => failureOf(f))
      .filter((f): f is ServerFailure => f !== null),
  };
}

/** One text frame from the server, or null if it is not a JSON object. */
export function decodeFrame(raw: string): ServerFrame | null {
  let parsed: unknown;
  try {
    parsed = JSON.parse(raw);
  } catch {
    return null;
  }
  if (!isObject(parsed)) return null;
  const object = parsed;
  const seq = int(object, 'seq');
  switch (int(object, 'msgid')) {
    case MSG.LOGIN_ACK: {
      const failure = failureOf(object);
      return { kind: 'login', seq, failure, ack: failure ? null : decodeLoginAck(object) };
    }
    case MSG.REGISTER_ACK: {
      const failure = failureOf(object);
      return {
        kind: 'register',
        seq,
        id: failure ? null : int(object, 'id'),
        // The classic refusal is a bare errno 1: say what it usually means.
        failure:
          failure && text(object, 'errmsg') === null
            ? { ...failure, errmsg: 'registration failed (the name may be taken)' }
            : failure,
      };
    }
    case MSG.REPLY:
      return { kind: 'reply', seq, body: object, failure: failureOf(object) };
    case MSG.CHAT:
    case MSG.GROUP_CHAT: {
      const chat = decodeChat(object);
      return chat ? { kind: 'chat', chat } : { kind: 'unknown', body: object };
    }
    case MSG.PONG:
      return { kind: 'pong' };
    case MSG.ROSTER_PAGE:
      return { kind: 'roster-page', page: decodeRoster(object) };
    case MSG.READ: {
      const conv = text(object, 'conv');
      const reader = int(object, 'id');
      const upto = int(object, 'upto');
      if (conv === null || reader === null || upto === null) break;
      return { kind: 'read', conv, reader, upto };
    }
    case MSG.TYPING: {
      const conv = text(object, 'conv');
      const id = int(object, 'id');
      if (conv === null || id === null) break;
      return { kind: 'typing', conv, id, name: text(object, 'name') ?? `User ${id}` };
    }
    case MSG.DELIVERED: {
      const conv = text(object, 'conv');
      const id = int(object, 'id');
      const upto = int(object, 'upto');
      if (conv === null || id === null || upto === null) break;
      return { kind: 'delivered', conv, id, upto };
    }
    case MSG.LOGOUT_EVERYWHERE:
      return { kind: 'signed-out', reason: text(object, 'reason') ?? 'you were logged out' };
    case MSG.PRESENCE: {
      const id = int(object, 'id');
      const online = object['online'];
      if (id === null || typeof online !== 'boolean') break;
      return { kind: 'presence', id, online };
    }
    default:
      break;
  }
  return { kind: 'unknown', body: object };
}

// ---- encoding (the connection adds `seq` to requests that want an answer) ----

export const encode = {
  /** With a password (`remember`: ask for a session token for `device`)
   *  or with the token a login was given. */
  login: (id: number, secret: Secret, since: number): JsonObject => ({
    msgid: MSG.LOGIN,
    id,
    ...('token' in secret
      ? { token: secret.token }
      : { password: secret.password, ...(secret.remember ? { remember: true, device: secret.remember } : {}) }),
    acks: true,
    presence: true,
    ...(since > 0 ? { since } : {}),
  }),
  logoutEverywhere: (): JsonObject => ({ msgid: MSG.LOGOUT_EVERYWHERE }),
  changePassword: (password: string, newPassword: string): JsonObject => ({
    msgid: MSG.PASSWORD,
    password,
    new_password: newPassword,
  }),
  register: (name: string, password: string): JsonObject => ({ msgid: MSG.REGISTER, name, password }),
  logout: (me: number): JsonObject => ({ msgid: MSG.LOGOUT, id: me }),
  /** A chat to a conversation: `cmid` makes a resend after a reconnect a no-op. */
  chat: (me: number, conv: string, msg: string, cmid: string): JsonObject | null => {
    const ref = parseConv(conv);
    if (!ref) return null;
    if (ref.kind === 'group') return { msgid: MSG.GROUP_CHAT, id: me, groupid: ref.group, msg, cmid };
    const to = peerOf(conv, me);
    return to === null ? null : { msgid: MSG.CHAT, id: me, toid: to, msg, cmid };
  },
  ack: (rseq: number): JsonObject => ({ msgid: MSG.ACK, ack: rseq }),
  /** A group's log entries up to `cseq` (`conv` is "g:GID"). */
  groupAck: (conv: string, cseq: number): JsonObject => ({ msgid: MSG.ACK, ack: cseq, conv }),
  ping: (): JsonObject => ({ msgid: MSG.PING }),
  addFriend: (me: number, friend: number): JsonObject => ({ msgid: MSG.ADD_FRIEND, id: me, friendid: friend }),
  createGroup: (me: number, name: string, description: string): JsonObject => ({
    msgid: MSG.CREATE_GROUP,
    id: me,
    groupname: name,
    groupdesc: description,
  }),
  joinGroup: (me: number, group: number): JsonObject => ({ msgid: MSG.JOIN_GROUP, id: me, groupid: group }),
  removeFriend: (friend: number): JsonObject => ({ msgid: MSG.REMOVE_FRIEND, friendid: friend }),
  leaveGroup: (group: number): JsonObject => ({ msgid: MSG.LEAVE_GROUP, groupid: group }),
  renameGroup: (group: number, name: string): JsonObject => ({ msgid: MSG.RENAME_GROUP, groupid: group, groupname: name }),
  block: (user: number, on: boolean): JsonObject => ({ msgid: on ? MSG.BLOCK : MSG.UNBLOCK, userid: user }),
  history: (conv: string, page: { before?: number; after?: number; limit?: number }): JsonObject => ({
    msgid: MSG.HISTORY,
    conv,
    ...(page.before ? { before: page.before } : {}),
    ...(page.after ? { after: page.after } : {}),
    ...(page.limit ? { limit: page.limit } : {}),
  }),
  conversations: (limit: number): JsonObject => ({ msgid: MSG.CONVERSATIONS, limit }),
  read: (conv: string, upto: number): JsonObject => ({ msgid: MSG.READ, conv, upto }),
  typing: (conv: string): JsonObject => ({ msgid: MSG.TYPING, conv }),
  delivered: (conv: string, upto: number): JsonObject => ({ msgid: MSG.DELIVERED, conv, upto }),
  roster: (): JsonObject => ({ msgid: MSG.ROSTER }),
  search: (q: string, offset: number, limit: number): JsonObject => ({
    msgid: MSG.SEARCH,
    q,
    limit,
    ...(offset > 0 ? { offset } : {}),
  }),
};
