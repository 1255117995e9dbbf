// Search in the sidebar: a box above the conversation list; its hits take
// the list's place (best first, the words marked) until the search is
// cleared; a hit opens its conversation at that message.

import { markedPieces, type SearchHit, type SearchPage } from '../protocol';
import { parseServerTime, shortStamp } from '../time';
import { h, setText } from './dom';
import { messageOf } from './login';

export interface SearchActions {
  search(query: string, offset: number): Promise<SearchPage>;
  /** Opens `conv` at the message numbered `cseq`. */
  reveal(conv: string, cseq: number | null): void;
  /** How the sidebar names a conversation. */
  title(conv: string): string;
}

export class SearchPanel {
  readonly form: HTMLFormElement;
  readonly results: HTMLElement;
  private readonly input: HTMLInputElement;
  private readonly status: HTMLElement;
  private readonly list: HTMLUListElement;
  private readonly more: HTMLButtonElement;
  private query = '';
  private shown = 0;
  /** Each search (and clearing) bumps it: a late reply to an older one is dropped. */
  private generation = 0;

  constructor(
    private readonly actions: SearchActions,
    /** Called when hits take the list's place (true) or give it back. */
    private readonly onActive: (active: boolean) => void,
  ) {
    this.input = h('input', {
      type: 'search',
      class: 'search-input',
      'data-testid': 'search-input',
      placeholder: 'Search messages',
      'aria-label': 'Search messages',
      maxlength: 200,
      autocomplete: 'off',
      enterkeyhint: 'search',
    });
    this.input.addEventListener('keydown', (event) => {
      if (event.key === 'Escape' && this.query) {
        event.preventDefault();
        this.clear();
      }
    });
    // The browser's clear (×) in a search field empties it: back to the list.
    this.input.addEventListener('input', () => {
      if (this.input.value === '' && this.query) this.clear();
    });
    this.form = h(
      'form',
      { class: 'search', role: 'search', novalidate: true },
      this.input,
      h('button', { type: 'submit', class: 'quiet', 'data-testid': 'search-submit' }, 'Search'),
    );
    this.form.addEventListener('submit', (event) => {
      event.preventDefault();
      const query = this.input.value.trim();
      if (query) void this.run(query, 0);
      else this.clear();
    });

    this.status = h('p', { class: 'search-status', role: 'status', 'data-testid': 'search-status' });
    this.list = h('ul', { class: 'search-hits', 'data-testid': 'search-results', 'aria-label': 'Search results' });
    this.more = h(
      'button',
      {
        type: 'button',
        class: 'quiet search-more',
        'data-testid': 'search-more',
        hidden: true,
        onclick: () => void this.run(this.query, this.shown),
      },
      'More results',
    );
    const close = h(
      'button',
      {
        type: 'button',
        class: 'quiet',
        'data-testid': 'search-clear',
        title: 'Back to the conversations',
        onclick: () => this.clear(),
      },
      'Clear',
    );
    this.results = h(
      'section',
      { class: 'search-results', 'aria-label': 'Search results', hidden: true },
      h('div', { class: 'search-head' }, this.status, close),
      this.list,
      this.more,
    );
  }

  private async run(query: string, offset: number): Promise<void> {
    const generation = ++this.generation;
    this.query = query;
    if (offset === 0) {
      this.list.replaceChildren();
      this.shown = 0;
    }
    this.more.hidden = true;
    this.results.hidden = false;
    this.onActive(true);
    setText(this.status, 'Searching…');
    try {
      const page = await this.actions.search(query, offset);
      if (generation !== this.generation) return;
      for (const hit of page.hits) this.list.append(this.item(hit));
      this.shown += page.hits.length;
      this.more.hidden = !page.more;
      setText(
        this.status,
        this.shown === 0
          ? `Nothing found for “${query}”.`
          : `${this.shown}${page.more ? '+' : ''} message${this.shown === 1 ? '' : 's'} with “${query}”`,
      );
    } catch (error) {
      if (generation !== this.generation) return;
      setText(this.status, messageOf(error));
    }
  }

  private item(hit: SearchHit): HTMLLIElement {
    const chat = hit.chat;
    const text = h('span', { class: 'hit-text', 'data-testid': 'hit-text' });
    for (const piece of markedPieces(chat.text, hit.marks)) {
      text.append(piece.marked ? h('mark', {}, piece.text) : document.createTextNode(piece.text));
    }
    const at = parseServerTime(chat.time);
    return h(
      'li',
      {},
      h(
        'button',
        {
          type: 'button',
          class: 'hit',
          'data-testid': 'search-hit',
          'data-conv': chat.conv,
          'data-cseq': chat.cseq !== null ? String(chat.cseq) : '',
          onclick: () => this.actions.reveal(chat.conv, chat.cseq),
        },
        h(
          'span',
          { class: 'hit-head' },
          h('span', { class: 'hit-conv' }, this.actions.title(chat.conv)),
          h('time', { class: 'stamp' }, at === null ? chat.time : shortStamp(at, Date.now())),
        ),
        h('span', { class: 'hit-body' }, h('span', { class: 'hit-from' }, `${chat.fromName}: `), text),
      ),
    );
  }

  /** Back to the conversation list. */
  clear(): void {
    this.generation++;
    this.query = '';
    this.shown = 0;
    this.input.value = '';
    this.list.replaceChildren();
    this.results.hidden = true;
    this.onActive(false);
  }
}
