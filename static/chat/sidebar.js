/* The chat list: the drawer it is on narrow screens, and keeping it current.
 *
 * Titles are the server's: after a chat's first message this module asks the
 * conversation API for the title the server chose, rather than guessing it.
 * New list features (search, paging, per-chat menus) belong here.
 */
import { $, $all, holdFocus } from './dom.js';
import { page } from './state.js';

const sidebar = $('#sidebar');
const backdrop = $('#backdrop');
const menuToggle = $('#menu-toggle');

export function openSidebar() {
  if (!sidebar) return;
  sidebar.classList.add('open');
  backdrop.classList.add('open');
  menuToggle.setAttribute('aria-expanded', 'true');
  // Over the page, it is a modal dialog: what is behind it is inert.
  sidebar.setAttribute('role', 'dialog');
  sidebar.setAttribute('aria-modal', 'true');
  holdFocus(sidebar);
  const target = $('.conv.current a', sidebar) || $('a, button', sidebar);
  if (target) target.focus();
}

export function closeSidebar(returnFocus) {
  if (!sidebar || !sidebar.classList.contains('open')) return false;
  sidebar.classList.remove('open');
  backdrop.classList.remove('open');
  menuToggle.setAttribute('aria-expanded', 'false');
  sidebar.setAttribute('role', 'complementary');
  sidebar.removeAttribute('aria-modal');
  holdFocus(null);
  if (returnFocus) menuToggle.focus();
  return true;
}

/** Show a new title for this chat everywhere it appears. */
export function showTitle(title) {
  const heading = $('#chat-title');
  if (heading) heading.textContent = title;
  document.title = title + ' · Chatsite';
  const current = $('.conv.current a');
  if (current) {
    current.textContent = title;
    current.title = title;
  }
  for (const button of $all('[data-rename-url], [data-delete-url]')) {
    const url = button.getAttribute('data-rename-url') || button.getAttribute('data-delete-url');
    if (!url.includes(page.conversationId)) continue;
    button.setAttribute('data-title', title);
    if (button.hasAttribute('aria-label')) {
      button.setAttribute('aria-label', (button.hasAttribute('data-rename-url') ? 'Rename ' : 'Delete ') + title);
    }
  }
}

let titled = page.root ? page.root.getAttribute('data-titled') === '1' : true;

/** After a user message: an untitled chat has just been titled by the server. */
export function noteUserMessage(title) {
  moveCurrentToTop();
  if (titled) return;
  if (title) {
    titled = true;
    showTitle(title);
  }
}

export function isTitled() { return titled; }

export function moveCurrentToTop() {
  const current = $('.conv.current');
  if (current && current.parentNode.firstElementChild !== current) {
    current.parentNode.insertBefore(current, current.parentNode.firstElementChild);
  }
}

export function initSidebar() {
  if (!menuToggle) return;
  menuToggle.addEventListener('click', () => {
    if (sidebar.classList.contains('open')) closeSidebar(true);
    else openSidebar();
  });
  if (backdrop) backdrop.addEventListener('click', () => closeSidebar(true));
  for (const button of $all('[data-close-sidebar]')) button.addEventListener('click', () => closeSidebar(true));
}
