/* Small DOM helpers the chat modules share. */

export function $(selector, root) { return (root || document).querySelector(selector); }

export function $all(selector, root) { return Array.from((root || document).querySelectorAll(selector)); }

export function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = text;
  return node;
}

/** Change a node's text only when it differs, so live regions do not repeat themselves. */
export function setText(node, text) {
  if (node && node.textContent !== text) node.textContent = text;
}

/** A copy of one of the page's <template id="icon-NAME"> icons. */
export function svgIcon(id) {
  const template = document.getElementById('icon-' + id);
  return template ? template.content.firstElementChild.cloneNode(true) : document.createTextNode('');
}

/** A button that stays focusable while unavailable (aria-disabled, not disabled). */
export function setUnavailable(button, unavailable) {
  if (unavailable) button.setAttribute('aria-disabled', 'true');
  else button.removeAttribute('aria-disabled');
}

export function isUnavailable(button) { return button.getAttribute('aria-disabled') === 'true'; }

/** The page's CSRF token (from any of its forms), for a fetch that changes something. */
export function csrfToken() {
  const input = document.querySelector('input[name=csrfmiddlewaretoken]');
  return input ? input.value : '';
}

export function isNarrow() { return window.matchMedia('(max-width: 820px)').matches; }

// Live regions stay out of reach of inert, or their announcements would be lost.
const KEEP_LIVE = '[aria-live], [role=status], [role=alert], template';

const FOCUSABLE = 'a[href], button, input:not([type=hidden]), textarea, select, summary, [tabindex]:not([tabindex="-1"])';
let held = null;

// Tab from the last control of a panel that holds focus goes to its first, and back.
document.addEventListener('keydown', (event) => {
  if (event.key !== 'Tab' || !held) return;
  const items = Array.from(held.querySelectorAll(FOCUSABLE)).filter((node) => !node.disabled && node.offsetParent !== null);
  if (!items.length) return;
  const first = items[0];
  const last = items[items.length - 1];
  if (event.shiftKey && (document.activeElement === first || !held.contains(document.activeElement))) {
    event.preventDefault();
    last.focus();
  } else if (!event.shiftKey && (document.activeElement === last || !held.contains(document.activeElement))) {
    event.preventDefault();
    first.focus();
  }
});

/** Make everything but `keep` inert (a full-screen panel holds focus), or undo it. */
export function holdFocus(keep) {
  held = keep;
  for (const node of document.querySelectorAll('[data-inert-by-panel]')) {
    node.inert = false;
    node.removeAttribute('data-inert-by-panel');
  }
  if (!keep) return;
  for (const node of document.body.children) {
    if (node.contains(keep) || node.matches(KEEP_LIVE) || node.tagName === 'SCRIPT' || node.inert) continue;
    node.inert = true;
    node.setAttribute('data-inert-by-panel', '');
  }
  // The panel may sit inside a container shared with what it covers.
  let child = keep;
  while (child.parentElement && child.parentElement !== document.body) {
    for (const sibling of child.parentElement.children) {
      if (sibling === child || sibling.inert || sibling.matches(KEEP_LIVE)) continue;
      sibling.inert = true;
      sibling.setAttribute('data-inert-by-panel', '');
    }
    child = child.parentElement;
  }
}
