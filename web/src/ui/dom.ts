// A few DOM helpers. Text from the server only ever goes in as text nodes
// (`textContent`): nothing here parses HTML. Nothing sets inline styles or
// handlers as attributes either (the gateway's CSP forbids them).

type Attrs = Record<string, string | number | boolean | null | undefined | ((e: Event) => void)>;
type Child = Node | string | null | undefined | false;

/** `h('button', {type: 'submit', 'data-testid': 'send', onclick: f}, 'Send')`. */
export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Attrs = {},
  ...children: Child[]
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (typeof value === 'function') {
      el.addEventListener(key.replace(/^on/, ''), value as EventListener);
    } else if (key === 'class') {
      el.className = String(value);
    } else {
      el.setAttribute(key, value === true ? '' : String(value));
    }
  }
  append(el, children);
  return el;
}

export function append(parent: Node, children: Child[]): void {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    parent.appendChild(typeof child === 'string' ? document.createTextNode(child) : child);
  }
}

/** Sets text only when it changed (keeps selections and avoids layout work). */
export function setText(el: Element, text: string): void {
  if (el.textContent !== text) el.textContent = text;
}

export function setAttr(el: Element, name: string, value: string | null): void {
  if (value === null) {
    if (el.hasAttribute(name)) el.removeAttribute(name);
  } else if (el.getAttribute(name) !== value) {
    el.setAttribute(name, value);
  }
}

/** Makes `parent`'s children exactly `nodes`, in order, moving only what
 *  is out of place (nodes are reused by their callers, keyed as they like). */
export function reconcile(parent: Element, nodes: Node[]): void {
  let cursor: ChildNode | null = parent.firstChild;
  for (const node of nodes) {
    if (node === cursor) {
      cursor = cursor.nextSibling;
    } else {
      parent.insertBefore(node, cursor);
    }
  }
  while (cursor) {
    const next: ChildNode | null = cursor.nextSibling;
    parent.removeChild(cursor);
    cursor = next;
  }
}

/** An initial for an avatar, and a hue that stays the same for an id. */
export function avatar(name: string, key: number): HTMLElement {
  const initial = [...name.trim()][0]?.toUpperCase() ?? '?';
  const el = h('span', { class: 'avatar', 'aria-hidden': 'true' }, initial);
  // Through the CSSOM: the gateway's CSP allows no inline style attributes.
  el.style.setProperty('--hue', String((key * 137) % 360));
  return el;
}
