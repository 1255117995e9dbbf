// The open conversation: its header, the messages (older pages load when
// scrolled to the top, keeping what is on screen where it was), day
// separators, ticks, "typing…", and the composer (Enter sends, Shift+Enter
// is a new line).

import type { Conversation, Message, Store, TickState } from '../store';
import { typingText } from '../store';
import { clockTime, dayKey, dayLabel, fullStamp } from '../time';
import { avatar, h, reconcile, setAttr, setText } from './dom';
import { icon } from './icons';

export interface ConversationActions {
  send(conv: string, text: string): void;
  typing(conv: string): void;
  loadOlder(conv: string): void;
  retry(conv: string, mid: string): void;
  back(): void;
  removeFriend(conv: string): void;
  leaveGroup(conv: string): void;
  renameGroup(conv: string, name: string): void;
  block(conv: string, on: boolean): void;
}

const TICK_LABEL: Record<TickState, string> = {
  sending: 'Sending',
  sent: 'Sent',
  delivered: 'Delivered',
  read: 'Read',
  failed: 'Not sent',
};

/** Near enough to the bottom to follow new messages. */
const STICK_PX = 80;
/** Near enough to the top to fetch the previous page. */
const OLDER_PX = 200;

interface MessageNode {
  el: HTMLElement;
  sender: HTMLElement;
  time: HTMLTimeElement;
  ticks: HTMLElement | null;
  tickState: TickState | null;
  retry: HTMLButtonElement | null;
}

export class ConversationView {
  readonly element: HTMLElement;
  private conv: string | null = null;
  private readonly placeholder: HTMLElement;
  private readonly panel: HTMLElement;
  private readonly title: HTMLElement;
  private readonly subtitle: HTMLElement;
  private readonly headAvatar: HTMLElement;
  private readonly messagesEl: HTMLElement;
  private readonly topNote: HTMLElement;
  private readonly typingEl: HTMLElement;
  private readonly composer: HTMLTextAreaElement;
  private readonly jump: HTMLButtonElement;
  private readonly details: HTMLElement;
  private readonly detailsButton: HTMLButtonElement;
  private nodes = new Map<string, MessageNode>();
  private days = new Map<string, HTMLElement>();
  private loadingOlder = false;
  private historyTrouble = false;

  constructor(
    private readonly store: Store,
    private readonly actions: ConversationActions,
  ) {
    this.placeholder = h(
      'div',
      { class: 'chat-empty' },
      h('p', {}, 'Choose a conversation, or start one: add a friend by their id, or create or join a group.'),
    );
    const back = h(
      'button',
      { type: 'button', class: 'icon-button back', 'aria-label': 'Back to conversations', onclick: () => actions.back() },
      icon('back'),
    );
    this.headAvatar = h('span', { class: 'avatar-slot' });
    this.title = h('h2', { class: 'chat-title', 'data-testid': 'conversation-title', id: 'chat-title' });
    this.subtitle = h('p', { class: 'chat-subtitle', 'data-testid': 'conversation-subtitle' });
    this.topNote = h('div', { class: 'top-note', 'aria-hidden': 'true' });
    this.messagesEl = h('div', {
      class: 'messages',
      'data-testid': 'messages',
      role: 'log',
      'aria-labelledby': 'chat-title',
      tabindex: 0,
    });
    this.messagesEl.addEventListener('scroll', () => this.onScroll(), { passive: true });
    this.jump = h(
      'button',
      { type: 'button', class: 'icon-button jump', 'aria-label': 'Jump to the newest message', hidden: true },
      icon('down'),
    );
    this.jump.addEventListener('click', () => this.scrollToBottom());
    this.typingEl = h('p', { class: 'typing', 'data-testid': 'typing', 'aria-live': 'polite' });

    this.composer = h('textarea', {
      id: 'composer',
      class: 'composer-input',
      'data-testid': 'composer',
      rows: 1,
      placeholder: 'Message',
      'aria-label': 'Message',
      autocomplete: 'off',
    });
    this.composer.addEventListener('keydown', (event) => {
      if (event.key === 'Enter' && !event.shiftKey && !event.isComposing && !event.altKey && !event.ctrlKey) {
        event.preventDefault();
        this.submit();
      }
    });
    this.composer.addEventListener('input', () => {
      this.autosize();
      if (this.conv && this.composer.value.trim() !== '') this.actions.typing(this.conv);
    });
    const send = h(
      'button',
      { type: 'submit', class: 'icon-button send', 'data-testid': 'send', 'aria-label': 'Send' },
      icon('send'),
    );
    const form = h('form', { class: 'composer', 'aria-label': 'Write a message' }, this.composer, send);
    form.addEventListener('submit', (event) => {
      event.preventDefault();
      this.submit();
    });

    this.details = h('div', { class: 'chat-details', 'data-testid': 'details', hidden: true });
    this.detailsButton = h(
      'button',
      {
        type: 'button',
        class: 'quiet',
        'data-testid': 'conversation-details',
        'aria-expanded': 'false',
        onclick: () => {
          this.details.hidden = !this.details.hidden;
          setAttr(this.detailsButton, 'aria-expanded', String(!this.details.hidden));
          this.render(Date.now());
        },
      },
      'Details',
    );
    this.panel = h(
      'div',
      { class: 'chat-panel', hidden: true },
      h(
        'header',
        { class: 'chat-head' },
        back,
        this.headAvatar,
        h('div', { class: 'chat-head-text' }, this.title, this.subtitle),
        this.detailsButton,
      ),
      this.details,
      h('div', { class: 'messages-wrap' }, this.messagesEl, this.jump),
      this.typingEl,
      form,
    );
    this.element = h('section', { class: 'chat', 'aria-label': 'Conversation' }, this.placeholder, this.panel);
  }

  get current(): string | null {
    return this.conv;
  }

  /** Shows a conversation (or none). */
  show(conv: string | null): void {
    if (conv === this.conv) return;
    if (this.conv) this.drafts.set(this.conv, this.composer.value);
    this.conv = conv;
    this.nodes = new Map();
    this.days = new Map();
    this.loadingOlder = false;
    this.historyTrouble = false;
    this.messagesEl.replaceChildren();
    this.details.hidden = true;
    setAttr(this.detailsButton, 'aria-expanded', 'false');
    this.placeholder.hidden = conv !== null;
    this.panel.hidden = conv === null;
    if (conv === null) return;
    this.composer.value = this.drafts.get(conv) ?? '';
    this.autosize();
    this.render(Date.now(), true);
  }

  private readonly drafts = new Map<string, string>();

  focusComposer(): void {
    this.composer.focus();
  }

  /** Scrolls to the message numbered `cseq` and marks it (a search hit
   *  opened); false when it is not on screen. */
  reveal(cseq: number): boolean {
    const c = this.conv ? this.store.conversations.get(this.conv) : undefined;
    const m = c?.byCseq.get(cseq);
    const node = m ? this.nodes.get(m.mid) : undefined;
    if (!node) return false;
    for (const other of this.messagesEl.querySelectorAll('.found')) other.classList.remove('found');
    node.el.classList.add('found');
    node.el.scrollIntoView({ block: 'center' });
    return true;
  }

  /** An older page is being fetched (or finished). */
  setLoadingOlder(on: boolean): void {
    this.loadingOlder = on;
  }

  /** History could not be fetched (the app tries again). */
  setHistoryTrouble(on: boolean): void {
    this.historyTrouble = on;
  }

  render(now: number, jumpToBottom = false): void {
    const conv = this.conv;
    const c = conv ? this.store.conversations.get(conv) : undefined;
    if (!conv || !c) return;
    this.renderHead(c);

    const box = this.messagesEl;
    const wasAtBottom = box.scrollHeight - box.scrollTop - box.clientHeight < STICK_PX;
    const anchor = wasAtBottom ? null : this.visibleAnchor();
    const lastBefore = c.messages[c.messages.length - 1];

    const children: Node[] = [this.topNote];
    const keep = new Set<string>();
    const keepDays = new Set<string>();
    let previous: Message | null = null;
    let previousDay = '';
    for (const m of c.messages) {
      const day = m.at !== null ? dayKey(m.at) : previousDay;
      if (m.at !== null && day !== previousDay) {
        children.push(this.dayNode(day, m.at, now));
        keepDays.add(day);
        previousDay = day;
        previous = null;
      }
      const node = this.nodes.get(m.mid) ?? this.createNode(m, c);
      this.updateNode(node, m, c, previous);
      keep.add(m.mid);
      children.push(node.el);
      previous = m;
    }
    for (const mid of [...this.nodes.keys()]) if (!keep.has(mid)) this.nodes.delete(mid);
    for (const day of [...this.days.keys()]) if (!keepDays.has(day)) this.days.delete(day);

    setText(this.topNote, this.topNoteText(c));
    reconcile(box, children);

    const mineJustSent = lastBefore?.mine === true && lastBefore.pending === 'sending';
    if (jumpToBottom || wasAtBottom || mineJustSent) {
      box.scrollTop = box.scrollHeight;
    } else if (anchor) {
      box.scrollTop += anchor.el.getBoundingClientRect().top - anchor.top;
    }
    this.jump.hidden = box.scrollHeight - box.scrollTop - box.clientHeight < STICK_PX;

    setText(this.typingEl, typingText(this.store.typingNames(conv, now)));

    // The newest page until it came (the app retries a failure after a
    // while); then, as a first page that does not fill the view leaves
    // nothing to scroll, more until it does (or there is no more).
    const unfilled = c.hasOlder && !this.loadingOlder && box.scrollHeight <= box.clientHeight + OLDER_PX;
    if (!c.historyLoaded || unfilled) this.actions.loadOlder(conv);
  }

  /** Above the oldest message: what is known of what comes before it. */
  private topNoteText(c: Conversation): string {
    const more = !c.historyLoaded || c.hasOlder;
    if (more && this.historyTrouble) return 'Earlier messages could not be loaded; trying again…';
    if (more) return this.loadingOlder || !c.historyLoaded ? 'Loading earlier messages…' : '';
    return c.messages.length > 0 ? 'This is the beginning of the conversation.' : 'No messages yet. Say hello!';
  }

  private renderHead(c: Conversation): void {
    setText(this.title, c.name);
    const key = `${c.name}|${c.conv}`;
    if (this.headAvatar.dataset['key'] !== key) {
      this.headAvatar.dataset['key'] = key;
      this.headAvatar.replaceChildren(avatar(c.name, c.peer ?? (c.groupId ?? 0) + 7));
    }
    let subtitle: string;
    if (c.kind === 'direct') {
      // Presence is known for friends only.
      subtitle = c.inRoster ? `${c.online ? 'online' : 'offline'} · id ${c.peer}` : `id ${c.peer}`;
    } else {
      const members = c.members.size;
      const online = [...c.members.values()].filter((m) => m.online).length;
      subtitle = `group ${c.groupId}`;
      if (members > 0) subtitle += ` · ${members} member${members === 1 ? '' : 's'}, ${online} online`;
      if (c.description) subtitle += ` · ${c.description}`;
    }
    setText(this.subtitle, subtitle);
    this.subtitle.classList.toggle('online', c.kind === 'direct' && c.online);
    if (!this.details.hidden) this.renderDetails(c);
  }

  /** What can be done with the conversation: remove the friend; a group's
   *  members (roles, presence), leaving it, renaming it (its creator). */
  private renderDetails(c: Conversation): void {
    const conv = c.conv;
    const parts: Node[] = [];
    if (c.kind === 'direct') {
      if (c.inRoster) {
        parts.push(
          h(
            'button',
            { type: 'button', class: 'quiet danger', 'data-testid': 'remove-friend', onclick: () => this.actions.removeFriend(conv) },
            'Remove friend',
          ),
        );
      } else {
        parts.push(h('p', {}, 'Not a friend of yours.'));
      }
      const blocked = c.peer !== null && this.store.blocked.has(c.peer);
      parts.push(
        h(
          'button',
          {
            type: 'button',
            class: blocked ? 'quiet' : 'quiet danger',
            'data-testid': blocked ? 'unblock' : 'block',
            onclick: () => this.actions.block(conv, !blocked),
          },
          blocked ? 'Unblock' : 'Block',
        ),
      );
    } else if (c.inRoster) {
      const members = [...c.members.values()].sort(
        (a, b) => Number(b.creator) - Number(a.creator) || a.name.localeCompare(b.name),
      );
      parts.push(
        h(
          'ul',
          { class: 'members', 'data-testid': 'members', 'aria-label': 'Members' },
          ...members.map((m) =>
            h(
              'li',
              { 'data-id': String(m.id), 'data-online': String(m.online), 'data-role': m.creator ? 'creator' : 'member' },
              h('span', { class: 'dot', 'data-online': String(m.online), title: m.online ? 'online' : 'offline' }),
              `${m.name} (${m.id})${m.creator ? ' · creator' : ''}`,
            ),
          ),
        ),
      );
      if (c.members.get(this.store.me)?.creator) {
        const input = h('input', { 'data-testid': 'rename-input', 'aria-label': 'New group name', value: c.name, maxlength: 64 });
        const form = h(
          'form',
          { class: 'rename' },
          input,
          h('button', { type: 'submit', class: 'quiet', 'data-testid': 'rename-submit' }, 'Rename'),
        );
        form.addEventListener('submit', (event) => {
          event.preventDefault();
          const name = input.value.trim();
          if (name) this.actions.renameGroup(conv, name);
        });
        parts.push(form);
      } else {
        parts.push(
          h(
            'button',
            { type: 'button', class: 'quiet danger', 'data-testid': 'leave-group', onclick: () => this.actions.leaveGroup(conv) },
            'Leave group',
          ),
        );
      }
    } else {
      parts.push(h('p', {}, 'You are not in this group.'));
    }
    // Rebuilt only when what it shows changed (a typed name survives).
    const key = JSON.stringify([conv, c.kind, c.inRoster, [...c.members.values()], c.peer !== null && this.store.blocked.has(c.peer)]);
    if (this.details.dataset['key'] === key) return;
    this.details.dataset['key'] = key;
    this.details.replaceChildren(...parts);
  }

  private dayNode(day: string, at: number, now: number): HTMLElement {
    let el = this.days.get(day);
    if (!el) {
      el = h('div', { class: 'day', 'data-testid': 'day', role: 'separator' }, h('span', {}));
      this.days.set(day, el);
    }
    setText(el.firstChild as HTMLElement, dayLabel(at, now));
    return el;
  }

  private createNode(m: Message, c: Conversation): MessageNode {
    const sender = h('span', { class: 'sender', 'data-testid': 'sender' });
    const text = h('span', { class: 'text', 'data-testid': 'text' }, m.text);
    const time = h('time', { class: 'time', 'data-testid': 'time' });
    const meta = h('span', { class: 'meta' }, time);
    let ticks: HTMLElement | null = null;
    if (m.mine) {
      ticks = h('span', { class: 'ticks', 'data-testid': 'ticks', role: 'img' });
      meta.appendChild(ticks);
    }
    const el = h(
      'div',
      { class: `msg ${m.mine ? 'mine' : 'theirs'}`, 'data-testid': 'message', 'data-mine': String(m.mine) },
      h('div', { class: 'bubble' }, sender, text, meta),
    );
    const node: MessageNode = { el, sender, time, ticks, tickState: null, retry: null };
    this.nodes.set(m.mid, node);
    if (c.kind === 'group' && !m.mine) el.classList.add('with-sender');
    return node;
  }

  private updateNode(node: MessageNode, m: Message, c: Conversation, previous: Message | null): void {
    setAttr(node.el, 'data-mid', m.mid);
    setAttr(node.el, 'data-cseq', m.cseq !== null ? String(m.cseq) : '');
    setText(node.sender, m.mine ? this.store.myName : m.fromName);
    // Consecutive messages of one sender within a few minutes form a group.
    const continued =
      previous !== null &&
      previous.from === m.from &&
      m.at !== null &&
      previous.at !== null &&
      m.at - previous.at < 5 * 60_000;
    node.el.classList.toggle('continued', continued);
    node.sender.classList.toggle('visually-hidden', m.mine || c.kind !== 'group' || continued);
    if (m.at !== null) {
      setText(node.time, clockTime(m.at));
      setAttr(node.time, 'datetime', new Date(m.at).toISOString());
      setAttr(node.time, 'title', fullStamp(m.at));
    } else {
      setText(node.time, m.time);
    }
    if (node.ticks) {
      const state = this.store.ticks(m) ?? 'sent';
      if (state !== node.tickState) {
        node.tickState = state;
        setAttr(node.ticks, 'data-state', state);
        setAttr(node.ticks, 'aria-label', TICK_LABEL[state]);
        setAttr(node.ticks, 'title', TICK_LABEL[state]);
        node.ticks.replaceChildren(icon(state));
        node.el.classList.toggle('failed', state === 'failed');
        if (state === 'failed' && !node.retry) {
          node.retry = h('button', { type: 'button', class: 'retry' }, 'Not sent: try again');
          node.retry.addEventListener('click', () => this.actions.retry(m.conv, m.mid));
          node.el.appendChild(node.retry);
        } else if (state !== 'failed' && node.retry) {
          node.retry.remove();
          node.retry = null;
        }
      }
    }
  }

  /** The first message at least partly on screen, and where it is (not a
   *  day separator: those are sticky, and move when older messages come). */
  private visibleAnchor(): { el: HTMLElement; top: number } | null {
    const boxTop = this.messagesEl.getBoundingClientRect().top;
    for (const child of this.messagesEl.children) {
      if (!(child instanceof HTMLElement) || !child.classList.contains('msg')) continue;
      const rect = child.getBoundingClientRect();
      if (rect.bottom > boxTop) return { el: child, top: rect.top };
    }
    return null;
  }

  private onScroll(): void {
    const box = this.messagesEl;
    this.jump.hidden = box.scrollHeight - box.scrollTop - box.clientHeight < STICK_PX;
    const c = this.conv ? this.store.conversations.get(this.conv) : undefined;
    if (c && this.conv && c.historyLoaded && c.hasOlder && !this.loadingOlder && box.scrollTop < OLDER_PX) {
      this.actions.loadOlder(this.conv);
    }
  }

  private scrollToBottom(): void {
    this.messagesEl.scrollTop = this.messagesEl.scrollHeight;
    this.composer.focus();
  }

  private submit(): void {
    const text = this.composer.value;
    if (!this.conv || text.trim() === '') return;
    this.actions.send(this.conv, text.replace(/^\n+|\s+$/g, ''));
    this.composer.value = '';
    this.drafts.delete(this.conv);
    this.autosize();
    this.composer.focus();
  }

  private autosize(): void {
    const box = this.composer;
    box.style.height = 'auto';
    // scrollHeight leaves out the borders, which border-box heights include.
    const borders = box.offsetHeight - box.clientHeight;
    box.style.height = `${Math.min(box.scrollHeight + borders, 160)}px`;
    box.style.overflowY = box.scrollHeight + borders > 160 ? 'auto' : 'hidden';
  }
}
