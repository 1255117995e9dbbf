// Errors and notices that belong to no form: shown in one toast (text = the
// server's errmsg), until dismissed or replaced, or after a while.

import { h, setText } from './dom';

const SHOWN_MS = 8000;

export class Toast {
  readonly element: HTMLElement;
  private readonly text: HTMLElement;
  private timer: ReturnType<typeof setTimeout> | null = null;

  constructor() {
    this.text = h('span', { class: 'toast-text', 'data-testid': 'toast' });
    const close = h('button', { type: 'button', class: 'icon-button toast-close', 'aria-label': 'Dismiss' }, '×');
    close.addEventListener('click', () => this.hide());
    this.element = h('div', { class: 'toast', role: 'alert', hidden: true }, this.text, close);
  }

  show(message: string): void {
    setText(this.text, message);
    this.element.hidden = false;
    if (this.timer) clearTimeout(this.timer);
    this.timer = setTimeout(() => this.hide(), SHOWN_MS);
  }

  hide(): void {
    this.element.hidden = true;
    setText(this.text, '');
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
  }
}
