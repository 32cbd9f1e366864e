/* Message text to DOM: markdown-it, then DOMPurify, then the link policy.
 *
 * Model (and user) text is untrusted. markdown-it runs with raw HTML off, so
 * `<img onerror=...>` in a message is text; DOMPurify then keeps only the
 * tags and attributes markdown-it itself makes (a second, independent
 * defence); last, applyPolicy() keeps a link only when its URL is absolute
 * http(s), and shows every image as a link to it. Code is highlighted by
 * highlight.js and $…$ / $$…$$ typeset by KaTeX; both are loaded only when a
 * message needs them.
 *
 *   render(text, element)            replaces element's children
 *   renderStreaming(text, element)   the same for a growing reply: re-renders only the tail
 *
 * Code blocks get a Copy button (clipboard.js copies).
 */
import markdownit from '../vendor/markdown-it/markdown-it.min.mjs';
import '../vendor/dompurify/purify.min.js';
import { mathPlugin } from './math.js';
import { announce, copyText, flashButton } from './clipboard.js';

// The minified UMD build (a third the size of its ES module build) sets the global.
const DOMPurify = globalThis.DOMPurify;

const URL_START = /^https?:\/\//i;
const LANG = /^[A-Za-z0-9_+#.-]{1,24}$/;
const FENCE = /^ {0,3}(`{3,}|~{3,})/;

const ALLOWED_TAGS = [
  'p', 'br', 'h1', 'h2', 'h3', 'h4', 'h5', 'h6', 'strong', 'em', 's', 'del', 'code', 'pre', 'ul', 'ol', 'li',
  'blockquote', 'hr', 'a', 'img', 'table', 'thead', 'tbody', 'tr', 'th', 'td', 'span', 'div'
];
const ALLOWED_ATTR = ['href', 'src', 'alt', 'title', 'class', 'start'];

/** The href for a link, or null: only absolute http(s) URLs are links. */
export function safeUrl(raw) {
  const candidate = String(raw || '').trim();
  if (!URL_START.test(candidate)) return null;
  try {
    const url = new URL(candidate);
    return url.protocol === 'http:' || url.protocol === 'https:' ? url.href : null;
  } catch (e) {
    return null;
  }
}

/** The page's markdown-it. shiftHeadings: `#` becomes <h3>, since the page has h1 and h2. */
export function createMarkdown({ shiftHeadings = true } = {}) {
  const md = markdownit({ html: false, linkify: true, typographer: false });
  md.use(mathPlugin);
  // Table alignment as a class: the CSP allows no style attributes.
  md.core.ruler.push('align_class', (state) => {
    for (const token of state.tokens) {
      const style = token.attrGet && token.attrGet('style');
      const align = style && /text-align:(left|right|center)/.exec(style);
      if (!align) continue;
      token.attrs = token.attrs.filter(([name]) => name !== 'style');
      token.attrJoin('class', 'align-' + align[1]);
    }
  });
  if (shiftHeadings) {
    for (const rule of ['heading_open', 'heading_close']) {
      md.renderer.rules[rule] = (tokens, idx, options, env, self) => {
        const token = tokens[idx];
        token.tag = 'h' + Math.min(6, Number(token.tag.slice(1)) + 2);
        return self.renderToken(tokens, idx, options);
      };
    }
  }
  return md;
}

const md = createMarkdown();

/** HTML from markdown-it, sanitised, as a DocumentFragment. */
export function sanitize(html) {
  return DOMPurify.sanitize(html, { ALLOWED_TAGS, ALLOWED_ATTR, RETURN_DOM_FRAGMENT: true });
}

/** Only http(s) links stay links; images become links to them. */
export function applyPolicy(root) {
  for (const img of root.querySelectorAll('img')) {
    const href = safeUrl(img.getAttribute('src'));
    const label = img.getAttribute('alt') || img.getAttribute('src') || '';
    img.replaceWith(href ? link(href, document.createTextNode(label)) : document.createTextNode(label));
  }
  for (const a of root.querySelectorAll('a')) {
    const href = safeUrl(a.getAttribute('href'));
    if (href) link(href, null, a);
    else a.replaceWith(...a.childNodes);
  }
  return root;
}

function link(href, content, existing) {
  const a = existing || document.createElement('a');
  a.setAttribute('href', href);
  a.target = '_blank';
  a.rel = 'noopener noreferrer nofollow';
  if (!a.title) a.title = href;
  if (content) a.appendChild(content);
  return a;
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

/** A code block with its language and a Copy button; keyboard-scrollable. */
function decorateCode(root) {
  for (const pre of root.querySelectorAll('pre')) {
    const code = pre.querySelector('code');
    const match = code && /(?:^|\s)language-(\S+)/.exec(code.className);
    const lang = match && LANG.test(match[1]) ? match[1] : '';
    const wrap = el('div', 'codeblock');
    const head = el('div', 'codeblock-head');
    head.appendChild(el('span', 'codeblock-lang', lang || 'text'));
    const copy = el('button', 'link-btn copy-btn', 'Copy');
    copy.type = 'button';
    copy.setAttribute('aria-label', 'Copy code' + (lang ? ' (' + lang + ')' : ''));
    head.appendChild(copy);
    pre.replaceWith(wrap);
    pre.tabIndex = 0; // wide code scrolls sideways; let keyboards do it too
    wrap.append(head, pre);
  }
}

/** Markdown to a sanitised DOM fragment, decorated; lazy libraries are requested if needed. */
export function toFragment(text, renderer = md) {
  const fragment = applyPolicy(sanitize(renderer.render(text)));
  decorateCode(fragment);
  for (const table of fragment.querySelectorAll('table')) {
    const wrap = el('div', 'table-wrap');
    table.replaceWith(wrap);
    wrap.appendChild(table);
  }
  enhance(fragment);
  return fragment;
}

export function render(text, target) {
  target._stream = null;
  target.replaceChildren(toFragment(text));
  target.classList.add('md-rendered');
}

/** Where a growing text may be cut: the last blank line outside code and math
 * after which a new top-level block starts. What lies before it renders the
 * same whatever is appended (reference links aside: the final render() fixes
 * those), so only the text after it is re-rendered on each frame. */
export function stableEnd(text) {
  let end = 0;
  let fenced = null;
  let math = false;
  let offset = 0;
  const lines = text.split('\n');
  for (let i = 0; i < lines.length - 1; i++) {
    const line = lines[i];
    const fence = FENCE.exec(line);
    if (fenced) {
      if (fence && fence[1][0] === fenced[0] && fence[1].length >= fenced.length && !line.trim().slice(fence[1].length)) fenced = null;
    } else if (fence) {
      fenced = fence[1];
    } else if (line.trim() === '$$' || (line.trim().startsWith('$$') && !line.trim().slice(2).includes('$$'))) {
      math = !math;
    }
    offset += line.length + 1;
    const next = lines[i + 1];
    if (!fenced && !math && line.trim() === '' && next !== '' && /^[^\s>*+\-\d|]/.test(next) && !/^\[[^\]]*\]:/.test(next)) {
      end = offset;
    }
  }
  return end;
}

export function renderStreaming(text, target) {
  let stream = target._stream;
  if (!stream || !text.startsWith(stream.text) || !target.contains(stream.tail[0] || target)) {
    target.replaceChildren();
    stream = target._stream = { text: '', stable: 0, tail: [] };
  }
  const cut = /\]:/.test(text) ? 0 : stableEnd(text);
  for (const node of stream.tail) node.remove();
  if (cut > stream.stable) {
    target.appendChild(toFragment(text.slice(stream.stable, cut)));
    stream.stable = cut;
  }
  const tail = toFragment(text.slice(stream.stable));
  stream.tail = Array.from(tail.childNodes);
  target.appendChild(tail);
  stream.text = text;
  target.classList.add('md-rendered');
}

// ---- lazily loaded: highlight.js and KaTeX --------------------------------

let hljs = null;
let hljsLoading = null;
let katex = null;
let katexLoading = null;

function enhance(root) {
  const code = root.querySelectorAll('pre code[class*="language-"]');
  if (code.length) {
    if (hljs) code.forEach(highlight);
    else loadHighlighter();
  }
  const math = root.querySelectorAll('.math-inline, .math-block');
  if (math.length) {
    if (katex) math.forEach(typeset);
    else loadKatex();
  }
}

function highlight(code) {
  const match = /(?:^|\s)language-(\S+)/.exec(code.className);
  if (!match || code.classList.contains('hljs') || !hljs.getLanguage(match[1])) return;
  const html = hljs.highlight(code.textContent, { language: match[1], ignoreIllegals: true }).value;
  // highlight.js escapes the text it wraps; sanitising again costs little.
  code.replaceChildren(DOMPurify.sanitize(html, { ALLOWED_TAGS: ['span'], ALLOWED_ATTR: ['class'], RETURN_DOM_FRAGMENT: true }));
  code.classList.add('hljs');
}

function loadHighlighter() {
  if (!hljsLoading) {
    hljsLoading = import('../vendor/highlight.js/highlight.min.mjs').then((module) => {
      hljs = module.default;
      document.querySelectorAll('.md pre code[class*="language-"]').forEach(highlight);
    });
  }
  return hljsLoading;
}

function typeset(node) {
  if (node.hasAttribute('data-tex')) return;
  const tex = node.textContent;
  node.setAttribute('data-tex', tex);
  node.setAttribute('role', 'math');
  node.setAttribute('aria-label', tex);
  try {
    katex.render(tex, node, { displayMode: node.classList.contains('math-block'), throwOnError: true, trust: false });
  } catch (error) {
    if (!(error instanceof katex.ParseError)) throw error;
    // KaTeX's own error output (throwOnError: false) colours it with a style attribute, which the
    // Content-Security-Policy blocks; half-streamed maths fails to parse on nearly every frame.
    const shown = el('span', 'katex-error', tex);
    shown.title = error.message;
    node.replaceChildren(shown);
  }
}

function loadKatex() {
  if (!katexLoading) {
    const css = document.createElement('link');
    css.rel = 'stylesheet';
    css.href = new URL('../vendor/katex/katex.min.css', import.meta.url).href;
    document.head.appendChild(css);
    // The minified UMD build sets globalThis.katex (its ES module build is not minified).
    katexLoading = import('../vendor/katex/katex.min.js').then(() => {
      katex = globalThis.katex;
      document.querySelectorAll('.md .math-inline, .md .math-block').forEach(typeset);
    });
  }
  return katexLoading;
}

/** Resolves once every library the given text needs has loaded (tests wait on it). */
export function ready() {
  return Promise.all([hljsLoading, katexLoading]);
}

// Copy buttons of code blocks, wherever they are rendered (delegated, so a
// block re-rendered while a reply streams keeps working).
document.addEventListener('click', (event) => {
  const button = event.target.closest && event.target.closest('.copy-btn');
  if (!button) return;
  const block = button.closest('.codeblock');
  const code = block && block.querySelector('pre code');
  if (!code) return;
  copyText(code.textContent).then((ok) => {
    if (ok) {
      flashButton(button, 'Copied');
      announce('Code copied to the clipboard');
      return;
    }
    // Last resort: select the code so Ctrl+C / long-press copies it.
    const range = document.createRange();
    range.selectNodeContents(code);
    const selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
    flashButton(button, 'Press Ctrl+C');
    announce('Code selected; press Control C to copy');
  });
});
