// Message times: the server stamps chats "YYYY-MM-DD HH:MM:SS" in UTC (the
// classic format, which has no zone); they are shown in the reader's local
// time. Pure, apart from the locale the formatting functions use.

const CLASSIC = /^(\d{4})-(\d{2})-(\d{2})[ T](\d{2}):(\d{2}):(\d{2})(?:\.\d+)?Z?$/;

/** Milliseconds since the epoch, or null when the text is not a time. */
export function parseServerTime(time: string): number | null {
  const m = CLASSIC.exec(time.trim());
  if (m) {
    const [year, month, day, hour, minute, second] = m.slice(1, 7).map(Number) as [
      number,
      number,
      number,
      number,
      number,
      number,
    ];
    const ms = Date.UTC(year, month - 1, day, hour, minute, second);
    return Number.isNaN(ms) ? null : ms;
  }
  // Anything else a client put there: take it only if it names a zone.
  if (/(Z|[+-]\d{2}:?\d{2})$/.test(time.trim())) {
    const ms = Date.parse(time);
    return Number.isNaN(ms) ? null : ms;
  }
  return null;
}

/** The server's format for a moment (what a sent message shows until the
 *  server's copy arrives). */
export function formatServerTime(ms: number): string {
  return new Date(ms).toISOString().slice(0, 19).replace('T', ' ');
}

/** A local calendar day, as a sortable key ("2025-03-07"). */
export function dayKey(ms: number): string {
  const d = new Date(ms);
  const pad = (n: number) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}`;
}

/** "Today", "Yesterday", a weekday within the week, else a date. */
export function dayLabel(ms: number, now: number): string {
  const key = dayKey(ms);
  if (key === dayKey(now)) return 'Today';
  const yesterday = new Date(now);
  yesterday.setDate(yesterday.getDate() - 1);
  if (key === dayKey(yesterday.getTime())) return 'Yesterday';
  const sameYear = new Date(ms).getFullYear() === new Date(now).getFullYear();
  if (now - ms > 0 && now - ms < 6 * 86_400_000) {
    return new Date(ms).toLocaleDateString(undefined, { weekday: 'long' });
  }
  return new Date(ms).toLocaleDateString(undefined, {
    weekday: 'short',
    day: 'numeric',
    month: 'long',
    ...(sameYear ? {} : { year: 'numeric' }),
  });
}

/** "14:05" (or "2:05 PM", as the locale has it). */
export function clockTime(ms: number): string {
  return new Date(ms).toLocaleTimeString(undefined, { hour: '2-digit', minute: '2-digit' });
}

/** For the conversation list: the time today, else a short date. */
export function shortStamp(ms: number, now: number): string {
  if (dayKey(ms) === dayKey(now)) return clockTime(ms);
  if (now - ms > 0 && now - ms < 6 * 86_400_000) {
    return new Date(ms).toLocaleDateString(undefined, { weekday: 'short' });
  }
  return new Date(ms).toLocaleDateString(undefined, { day: 'numeric', month: 'short' });
}

/** The full date and time, for a tooltip. */
export function fullStamp(ms: number): string {
  return new Date(ms).toLocaleString(undefined, { dateStyle: 'full', timeStyle: 'short' });
}
