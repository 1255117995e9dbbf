// The sidebar: who I am and the connection's state, the forms that start
// conversations (add a friend, create or join a group), and the list of
// conversations, the most recently active first.

import type { ConnectionState } from '../connection';
import type { Conversation, Store } from '../store';
import { shortStamp } from '../time';
import { avatar, h, reconcile, setAttr, setText } from './dom';
import { messageOf } from './login';
import { type SearchActions, SearchPanel } from './search';

export interface SidebarActions extends Omit<SearchActions, 'title'> {
  open(conv: string): void;
  logout(): void;
  logoutEverywhere(): void;
  /** Whether notifications may be shown ("default": not asked yet). */
  notifications(): NotificationPermission | 'unsupported';
  enableNotifications(): Promise<void>;
  addFriend(id: number): Promise<string>;
  createGroup(name: string, description: string): Promise<{ text: string; id: number }>;
  joinGroup(id: number): Promise<string>;
}

const STATE_TEXT: Record<ConnectionState, string> = {
  connecting: 'connecting…',
  connected: 'connected',
  reconnecting: 'reconnecting…',
  closed: 'disconnected',
};

interface Item {
  li: HTMLLIElement;
  button: HTMLButtonElement;
  avatarSlot: HTMLElement;
  avatarKey: string;
  presence: HTMLElement | null;
  name: HTMLElement;
  stamp: HTMLTimeElement;
  last: HTMLElement;
  unread: HTMLElement;
}

export class Sidebar {
  readonly element: HTMLElement;
  private readonly notifyButton: HTMLButtonElement;
  private readonly stateEl: HTMLElement;
  private readonly meName: HTMLElement;
  private readonly meAvatar: HTMLElement;
  private readonly list: HTMLUListElement;
  private readonly empty: HTMLElement;
  private readonly actionError: HTMLElement;
  private readonly actionResult: HTMLElement;
  private readonly items = new Map<string, Item>();
  private readonly search: SearchPanel;
  private readonly nav: HTMLElement;
  /** The conversation open at the last render. */
  private lastSelected: string | null = null;

  constructor(
    private readonly store: Store,
    private readonly actions: SidebarActions,
  ) {
    this.stateEl = h('span', {
      class: 'conn-state',
      'data-testid': 'connection-state',
      'data-state': 'connecting',
      role: 'status',
    });
    setText(this.stateEl, STATE_TEXT.connecting);
    this.meName = h(
      'span',
      { class: 'me', 'data-testid': 'me', 'data-id': String(store.me) },
      h('span', { class: 'me-name' }, store.myName),
      h('span', { class: 'me-id' }, `id ${store.me}`),
    );
    this.meAvatar = avatar(store.myName, store.me);
    const logout = h(
      'button',
      { type: 'button', class: 'quiet', 'data-testid': 'logout', onclick: () => this.actions.logout() },
      'Log out',
    );
    this.notifyButton = h(
      'button',
      {
        type: 'button',
        class: 'quiet',
        'data-testid': 'enable-notifications',
        title: 'Tell me about messages in conversations I am not looking at',
        hidden: true,
        onclick: () => void this.actions.enableNotifications(),
      },
      'Turn on notifications',
    );
    const logoutEverywhere = h(
      'button',
      {
        type: 'button',
        class: 'quiet',
        'data-testid': 'logout-everywhere',
        title: 'Ends your sessions on every device and browser',
        onclick: () => this.actions.logoutEverywhere(),
      },
      'Log out everywhere',
    );

    this.actionError = h('p', { class: 'error', role: 'alert', 'data-testid': 'action-error', hidden: true });
    this.actionResult = h('p', { class: 'result', role: 'status', 'data-testid': 'action-result', hidden: true });

    this.list = h('ul', { class: 'conv-list', 'data-testid': 'conversation-list', 'aria-label': 'Conversations' });
    this.empty = h(
      'p',
      { class: 'list-empty' },
      'No conversations yet. Add a friend by their id, or create or join a group.',
    );

    this.search = new SearchPanel(
      {
        search: (query, offset) => this.actions.search(query, offset),
        reveal: (conv, cseq) => this.actions.reveal(conv, cseq),
        title: (conv) => this.store.conversations.get(conv)?.name ?? conv,
      },
      (active) => {
        this.nav.hidden = active;
      },
    );
    this.nav = h('nav', { class: 'conv-nav', 'aria-label': 'Conversations' }, this.list, this.empty);

    this.element = h(
      'aside',
      { class: 'sidebar', 'aria-label': 'Conversations and account' },
      h(
        'header',
        { class: 'me-bar' },
        this.meAvatar,
        h('div', { class: 'me-text' }, this.meName, this.stateEl),
        h('div', { class: 'me-actions' }, logout, logoutEverywhere, this.notifyButton),
      ),
      this.actionsPanel(),
      this.search.form,
      this.search.results,
      this.nav,
    );
  }

  private actionsPanel(): HTMLElement {
    const friendId = h('input', {
      id: 'add-friend-id',
      'data-testid': 'add-friend-id',
      inputmode: 'numeric',
      placeholder: 'Friend’s id',
      required: true,
      autocomplete: 'off',
    });
    const addFriend = this.form(
      'Add a friend',
      [h('label', { for: 'add-friend-id', class: 'visually-hidden' }, 'Friend’s id'), friendId],
      h('button', { type: 'submit', 'data-testid': 'add-friend-submit' }, 'Add'),
      async () => {
        const id = positiveId(friendId.value);
        if (id === null) throw new Error('A friend’s id is a number, like 12.');
        const text = await this.actions.addFriend(id);
        friendId.value = '';
        return { text };
      },
    );

    const groupName = h('input', {
      id: 'create-group-name',
      'data-testid': 'create-group-name',
      placeholder: 'Group name',
      required: true,
      maxlength: 64,
      autocomplete: 'off',
    });
    const groupDesc = h('input', {
      id: 'create-group-desc',
      'data-testid': 'create-group-desc',
      placeholder: 'Description (optional)',
      maxlength: 200,
      autocomplete: 'off',
    });
    const createGroup = this.form(
      'Create a group',
      [
        h('label', { for: 'create-group-name', class: 'visually-hidden' }, 'Group name'),
        groupName,
        h('label', { for: 'create-group-desc', class: 'visually-hidden' }, 'Group description'),
        groupDesc,
      ],
      h('button', { type: 'submit', 'data-testid': 'create-group-submit' }, 'Create'),
      async () => {
        const name = groupName.value.trim();
        if (name === '') throw new Error('Give the group a name.');
        const result = await this.actions.createGroup(name, groupDesc.value.trim());
        groupName.value = '';
        groupDesc.value = '';
        return result;
      },
    );

    const joinId = h('input', {
      id: 'join-group-id',
      'data-testid': 'join-group-id',
      inputmode: 'numeric',
      placeholder: 'Group id',
      required: true,
      autocomplete: 'off',
    });
    const joinGroup = this.form(
      'Join a group',
      [h('label', { for: 'join-group-id', class: 'visually-hidden' }, 'Group id'), joinId],
      h('button', { type: 'submit', 'data-testid': 'join-group-submit' }, 'Join'),
      async () => {
        const id = positiveId(joinId.value);
        if (id === null) throw new Error('A group’s id is a number, like 3.');
        const text = await this.actions.joinGroup(id);
        joinId.value = '';
        return { text };
      },
    );

    return h(
      'details',
      { class: 'actions', open: true },
      h('summary', {}, 'New conversation'),
      addFriend,
      createGroup,
      joinGroup,
      this.actionError,
      this.actionResult,
    );
  }

  /** One small form: its fields, its button, and what submitting does. */
  private form(
    title: string,
    fields: HTMLElement[],
    submit: HTMLButtonElement,
    run: () => Promise<{ text: string; id?: number }>,
  ): HTMLFormElement {
    const form = h(
      'form',
      { class: 'action', 'aria-label': title, novalidate: true },
      h('span', { class: 'action-title', 'aria-hidden': 'true' }, title),
      h('div', { class: 'action-row' }, ...fields, submit),
    );
    form.addEventListener('submit', (event) => {
      event.preventDefault();
      this.actionError.hidden = true;
      this.actionResult.hidden = true;
      submit.disabled = true;
      run()
        .then((result) => {
          setText(this.actionResult, result.text);
          setAttr(this.actionResult, 'data-id', result.id !== undefined ? String(result.id) : null);
          this.actionResult.hidden = false;
        })
        .catch((error: unknown) => {
          setText(this.actionError, messageOf(error));
          this.actionError.hidden = false;
        })
        .finally(() => {
          submit.disabled = false;
        });
    });
    return form;
  }

  setConnectionState(state: ConnectionState): void {
    setAttr(this.stateEl, 'data-state', state);
    setText(this.stateEl, STATE_TEXT[state]);
  }

  render(selected: string | null, now: number, hideUnreadOf: string | null): void {
    setText(this.meName.firstChild as HTMLElement, this.store.myName);
    // Offered until the user answered the browser's question.
    this.notifyButton.hidden = this.actions.notifications() !== 'default';
    const conversations = this.store.sortedConversations();
    const nodes: Node[] = [];
    const seen = new Set<string>();
    for (const c of conversations) {
      seen.add(c.conv);
      const item = this.items.get(c.conv) ?? this.createItem(c);
      this.update(item, c, selected === c.conv, now, c.conv === hideUnreadOf);
      nodes.push(item.li);
    }
    for (const conv of [...this.items.keys()]) if (!seen.has(conv)) this.items.delete(conv);
    reconcile(this.list, nodes);
    this.empty.hidden = conversations.length > 0;
    // Back to the list (a phone's one column: the back control, Escape):
    // the focus was in the conversation, now hidden; it goes to that
    // conversation's item, where the keyboard left off, not to the page.
    const back = this.lastSelected !== null && selected === null ? this.items.get(this.lastSelected) : undefined;
    this.lastSelected = selected;
    const active = document.activeElement;
    if (back && (!active || active === document.body || active.getClientRects().length === 0)) back.button.focus();
  }

  private createItem(c: Conversation): Item {
    const presence =
      c.kind === 'direct' ? h('span', { class: 'presence', 'data-testid': 'presence', 'data-online': 'false' }) : null;
    const avatarSlot = h('span', { class: 'avatar-slot' });
    const name = h('span', { class: 'conv-name', 'data-testid': 'conversation-name' });
    const stamp = h('time', { class: 'stamp' });
    const last = h('span', { class: 'last', 'data-testid': 'last-message' });
    const unread = h('span', { class: 'badge', 'data-testid': 'unread' });
    const button = h(
      'button',
      { type: 'button', class: 'conv', 'data-testid': 'conversation', 'data-conv': c.conv },
      h('span', { class: 'avatar-wrap' }, avatarSlot, presence),
      h(
        'span',
        { class: 'conv-main' },
        h('span', { class: 'conv-top' }, name, stamp),
        h('span', { class: 'conv-bottom' }, last),
      ),
    );
    button.addEventListener('click', () => this.actions.open(c.conv));
    const item: Item = {
      li: h('li', {}, button),
      button,
      avatarSlot,
      avatarKey: '',
      presence,
      name,
      stamp,
      last,
      unread,
    };
    this.items.set(c.conv, item);
    return item;
  }

  private update(item: Item, c: Conversation, selected: boolean, now: number, hideUnread: boolean): void {
    const key = `${c.name}|${c.peer ?? c.groupId}`;
    if (item.avatarKey !== key) {
      item.avatarKey = key;
      item.avatarSlot.replaceChildren(avatar(c.name, c.peer ?? (c.groupId ?? 0) + 7));
    }
    setText(item.name, c.name);
    if (item.presence) {
      setAttr(item.presence, 'data-online', String(c.online));
      setAttr(item.presence, 'title', c.online ? 'online' : 'offline');
    }
    const last = this.store.lastMessage(c.conv);
    let preview = '';
    if (last) {
      const who = last.mine ? 'You: ' : c.kind === 'group' ? `${last.fromName}: ` : '';
      preview = who + last.text.replace(/\s+/g, ' ').trim();
    } else if (c.kind === 'group') {
      preview = c.description;
    }
    setText(item.last, preview);
    setText(item.stamp, last?.at != null ? shortStamp(last.at, now) : '');
    setAttr(item.stamp, 'datetime', last?.at != null ? new Date(last.at).toISOString() : null);

    const count = hideUnread ? 0 : this.store.unread(c.conv);
    if (count > 0) {
      setText(item.unread, count > 999 ? '999+' : String(count));
      if (!item.unread.isConnected) item.last.after(item.unread);
    } else if (item.unread.isConnected) {
      item.unread.remove();
    }
    item.button.classList.toggle('has-unread', count > 0);
    setAttr(item.button, 'aria-current', selected ? 'true' : null);
    const parts = [c.name];
    if (c.kind === 'direct') parts.push(c.online ? 'online' : 'offline');
    else parts.push('group');
    if (count > 0) parts.push(`${count} unread`);
    if (preview) parts.push(preview);
    setAttr(item.button, 'aria-label', parts.join(', '));
  }
}

function positiveId(raw: string): number | null {
  const text = raw.trim();
  const n = Number(text);
  return /^\d+$/.test(text) && Number.isSafeInteger(n) && n > 0 ? n : null;
}
