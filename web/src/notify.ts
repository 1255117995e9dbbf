// Browser notifications for messages that arrive where the user is not
// looking: a conversation that is not open, or any while the tab is
// hidden. Never for the user's own messages (another device's included),
// never for what a login or a catch-up brings (only live chats), and only
// once the user allowed them (asked from a click, as browsers want).

import type { Message } from './store';

/** The part of the browser's `Notification` this uses (a fake in tests). */
export interface NotificationApi {
  readonly permission: NotificationPermission;
  requestPermission(): Promise<NotificationPermission>;
  new (title: string, options?: NotificationOptions): { onclick: ((this: unknown, ev: Event) => unknown) | null; close(): void };
}

/** Whether a live message deserves a notification. */
export function shouldNotify(m: Message, openConv: string | null, pageVisible: boolean): boolean {
  if (m.mine || m.pending !== null) return false;
  return !pageVisible || openConv !== m.conv;
}

const BODY_CHARS = 140;

export class Notifier {
  constructor(
    private readonly api: () => NotificationApi | undefined,
    /** Opens a conversation (the notification was clicked). */
    private readonly open: (conv: string) => void,
  ) {}

  /** "default": the user has not been asked yet (the page offers it). */
  get permission(): NotificationPermission | 'unsupported' {
    return this.api()?.permission ?? 'unsupported';
  }

  async ask(): Promise<NotificationPermission | 'unsupported'> {
    const api = this.api();
    if (!api) return 'unsupported';
    return api.requestPermission();
  }

  /** `title`: the conversation's name. */
  show(m: Message, title: string): void {
    const api = this.api();
    if (!api || api.permission !== 'granted') return;
    const text = m.text.length > BODY_CHARS ? `${m.text.slice(0, BODY_CHARS - 1)}…` : m.text;
    const body = title === m.fromName ? text : `${m.fromName}: ${text}`;
    try {
      // One per conversation at a time: `tag` replaces the older one.
      const n = new api(title, { body, tag: m.conv, icon: '/favicon.svg' });
      n.onclick = () => {
        window.focus();
        this.open(m.conv);
        n.close();
      };
    } catch {
      // Some browsers allow notifications only from a service worker.
    }
  }
}
