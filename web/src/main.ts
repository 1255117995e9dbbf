// The entry point: the login screen until a login succeeds, then a chat
// session until it ends (logout, or a login that is refused for good).

import { register } from './connection';
import { ChatSession } from './app';
import type { Secret } from './protocol';
import { deviceName, forget, loadSaved } from './saved';
import { loginScreen } from './ui/login';

/** Same origin as the page (`wss` under https), unless `?ws=URL` says otherwise. */
function websocketUrl(): string {
  const override = new URLSearchParams(location.search).get('ws');
  if (override) return override;
  return `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws`;
}

/** A session for `id`; resolves once its main screen shows. */
async function startSession(root: HTMLElement, id: number, secret: Secret): Promise<void> {
  const holder = document.createElement('div');
  holder.className = 'app-root';
  const session = new ChatSession(websocketUrl(), { id, secret }, holder, (end) => showLogin(root, end.message));
  await session.start();
  root.replaceChildren(holder);
}

function showLogin(root: HTMLElement, notice: string | null): void {
  const url = websocketUrl();
  const screen = loginScreen({
    login: (id, password, remember) =>
      startSession(root, id, { password, remember: remember ? deviceName(navigator.userAgent) : null }),
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

/** Signed in on this device before: log in with the saved token (a reload,
 *  a new tab); a token that no longer works is forgotten. */
async function resume(root: HTMLElement): Promise<void> {
  const saved = loadSaved();
  if (!saved) {
    showLogin(root, null);
    return;
  }
  root.setAttribute('data-resuming', 'true');
  try {
    await startSession(root, saved.id, { token: saved.token });
  } catch (error) {
    forget();
    showLogin(root, error instanceof Error ? error.message : String(error));
  } finally {
    root.removeAttribute('data-resuming');
  }
}

const root = document.getElementById('app');
if (root) void resume(root);
