// Staying signed in: the session token a password login was given, kept in
// this browser's localStorage so that a reload or a new tab logs in with it
// (see web/README.md, "Staying signed in", for why here and what an XSS
// could take). Never the password.

const KEY = 'clusterchat.session.v1';

export interface SavedSession {
  id: number;
  token: string;
}

export function loadSaved(): SavedSession | null {
  try {
    const raw = localStorage.getItem(KEY);
    if (!raw) return null;
    const parsed: unknown = JSON.parse(raw);
    if (typeof parsed !== 'object' || parsed === null) return null;
    const { id, token } = parsed as Record<string, unknown>;
    if (typeof id !== 'number' || !Number.isSafeInteger(id) || typeof token !== 'string' || !token.startsWith('ccs_')) {
      return null;
    }
    return { id, token };
  } catch {
    return null;
  }
}

export function save(session: SavedSession): void {
  try {
    localStorage.setItem(KEY, JSON.stringify(session));
  } catch {
    // Storage full or disabled: this tab stays signed in, a reload asks.
  }
}

export function forget(): void {
  try {
    localStorage.removeItem(KEY);
  } catch {
    // Nothing stored.
  }
}

/** True when `event` says the saved session was removed (another tab
 *  logged out) or replaced by another user's. */
export function savedSessionEnded(event: StorageEvent, id: number): boolean {
  if (event.key !== KEY && event.key !== null) return false;
  const now = loadSaved();
  return now === null || now.id !== id;
}

/** What this browser is, for the user's list of sessions: "Chrome on Linux". */
export function deviceName(userAgent: string): string {
  const browser = /Edg\//.test(userAgent)
    ? 'Edge'
    : /Firefox\//.test(userAgent)
      ? 'Firefox'
      : /Chrom(e|ium)\//.test(userAgent)
        ? 'Chrome'
        : /Safari\//.test(userAgent)
          ? 'Safari'
          : 'a browser';
  const system = /Android/.test(userAgent)
    ? 'Android'
    : /iPhone|iPad/.test(userAgent)
      ? 'iOS'
      : /Mac OS X/.test(userAgent)
        ? 'macOS'
        : /Windows/.test(userAgent)
          ? 'Windows'
          : /Linux/.test(userAgent)
            ? 'Linux'
            : 'an unknown system';
  return `web: ${browser} on ${system}`;
}
