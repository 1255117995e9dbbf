// The entry point: the login screen until a login succeeds, then a chat
// session until it ends (logout, or a login that is refused for good).

import { register } from './connection';
import { ChatSession } from './app';
import { loginScreen } from './ui/login';

/** Same origin as the page (`wss` under https), unless `?ws=URL` says otherwise. */
function websocketUrl(): string {
  const override = new URLSearchParams(location.search).get('ws');
  if (override) return override;
  return `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws`;
}

function showLogin(root: HTMLElement, notice: string | null): void {
  const url = websocketUrl();
  const screen = loginScreen({
    login: async (id, password) => {
      const holder = document.createElement('div');
      holder.className = 'app-root';
      const session = new ChatSession(url, { id, password }, holder, (end) => showLogin(root, end.message));
      await session.start();
      root.replaceChildren(holder);
    },
    register: (name, password) => register(url, name, password),
  });
  root.replaceChildren(screen);
  if (notice) {
    const error = screen.querySelector<HTMLElement>('[data-testid="login-error"]');
    if (error) {
      error.textContent = notice;
      error.hidden = false;
    }
  }
  screen.querySelector<HTMLInputElement>('[data-testid="login-id"]')?.focus();
}

const root = document.getElementById('app');
if (root) showLogin(root, null);
