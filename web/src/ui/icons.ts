// Small inline SVG icons (built as DOM, no markup strings, no assets).

const NS = 'http://www.w3.org/2000/svg';

function svg(viewBox: string, paths: string[], className: string): SVGSVGElement {
  const root = document.createElementNS(NS, 'svg');
  root.setAttribute('viewBox', viewBox);
  root.setAttribute('class', `icon ${className}`);
  root.setAttribute('aria-hidden', 'true');
  root.setAttribute('focusable', 'false');
  for (const d of paths) {
    const path = document.createElementNS(NS, 'path');
    path.setAttribute('d', d);
    root.appendChild(path);
  }
  return root;
}

export type IconName = 'sending' | 'sent' | 'delivered' | 'read' | 'failed' | 'send' | 'back' | 'down';

export function icon(name: IconName): SVGSVGElement {
  switch (name) {
    case 'sending':
      return svg('0 0 16 16', ['M8 2.5a5.5 5.5 0 1 0 0 11 5.5 5.5 0 0 0 0-11Z', 'M8 5v3.2l2 1.3'], 'stroke');
    case 'sent':
      return svg('0 0 18 16', ['M3 8.5l3.5 3.5L14 4.5'], 'stroke');
    case 'delivered':
    case 'read':
      return svg('0 0 22 16', ['M2 8.5l3.5 3.5L13 4.5', 'M9 11.5l.5.5L17 4.5'], 'stroke');
    case 'failed':
      return svg('0 0 16 16', ['M8 2.5a5.5 5.5 0 1 0 0 11 5.5 5.5 0 0 0 0-11Z', 'M8 5v3.5', 'M8 10.6v.4'], 'stroke');
    case 'send':
      return svg('0 0 24 24', ['M3.4 20.4 21 12 3.4 3.6 3.4 10l12.6 2-12.6 2z'], 'fill');
    case 'back':
      return svg('0 0 24 24', ['M15 5l-7 7 7 7'], 'stroke');
    case 'down':
      return svg('0 0 24 24', ['M6 9l6 6 6-6'], 'stroke');
  }
}
