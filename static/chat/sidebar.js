/* The chat list: the drawer it is on narrow screens, keeping it current,
 * search, the other views (archived, API, batch) and loading more on scroll.
 *
 * Titles are the server's: after a chat's first message this module asks the
 * conversation API for the title the server chose, rather than guessing it.
 * The list is the server's too (`/api/conversations/`, docs/history.md): a
 * search or another view replaces it, the next page is appended from its
 * `next_cursor`. Snippets are text: matches are <mark>s around text nodes cut
 * at the server's `highlights` offsets, never parsed markup.
 */
import { $, $all, el, holdFocus, svgIcon } from './dom.js';
import { page } from './state.js';
import { regroup } from './rows.js';

const LIST_URL = '/api/conversations/';
const SEARCH_DELAY_MS = 250;
const LOAD_MORE_PX = 120;
const HEADINGS = { 'source=web,import': 'Your chats', 'archived=1': 'Archived chats', 'source=api': 'API calls', 'source=batch': 'Batch runs' };

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
    current.closest('.conv').setAttribute('data-title', title);
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
  if (titled) return;
  if (title) {
    titled = true;
    showTitle(title);
  }
}

export function isTitled() { return titled; }

/** A turn started in this chat: it moves where the server's order (pinned, then newest activity) puts it,
 * first among the pinned chats if it is pinned, else first after them. Opening a chat moves nothing. */
export function moveCurrentUp() {
  const current = $('.conv.current');
  if (!current) return;
  const rows = $all(':scope > .conv', current.parentNode);
  let at = 0;
  if (!current.classList.contains('pinned')) {
    while (rows[at] !== current && rows[at].classList.contains('pinned')) at += 1;
  }
  if (rows[at] !== current) current.parentNode.insertBefore(current, rows[at]);
  current.setAttribute('data-updated', new Date().toISOString());  // it is Today's now
  regroup(current.parentNode);
}

/** Fetch the list again for its view and search (a row's flags changed). */
export function reloadList() { load(true); }

export function initSidebar() {
  initList();
  if (!menuToggle) return;
  menuToggle.addEventListener('click', () => {
    if (sidebar.classList.contains('open')) closeSidebar(true);
    else openSidebar();
  });
  if (backdrop) backdrop.addEventListener('click', () => closeSidebar(true));
  for (const button of $all('[data-close-sidebar]')) button.addEventListener('click', () => closeSidebar(true));
}

// ---- the list: search, views, more ----

const list = { nav: null, ul: null, more: null, status: null, search: null, view: null, next: null, loading: 0, timer: null };

function snippetEl(text, highlights) {
  const node = el('span', 'conv-snippet');
  let at = 0;
  for (const [start, end] of Array.isArray(highlights) ? highlights : []) {
    if (!(start >= at && end > start && end <= text.length)) continue;
    node.append(document.createTextNode(text.slice(at, start)), el('mark', null, text.slice(start, end)));
    at = end;
  }
  node.append(document.createTextNode(text.slice(at)));
  return node;
}

function actionButton(kind, label, url, title) {
  const button = el('button', 'icon-btn');
  button.type = 'button';
  button.setAttribute('data-' + kind + '-url', url);
  button.setAttribute('data-title', title);
  button.setAttribute('aria-label', label + ' ' + title);
  button.title = label;
  button.append(svgIcon(kind === 'rename' ? 'pencil' : 'trash'));
  return button;
}

function convItem(c) {
  const current = c.id === page.conversationId;
  const li = el('li', 'conv' + (current ? ' current' : '') + (c.pinned ? ' pinned' : ''));
  li.setAttribute('data-id', c.id);
  li.setAttribute('data-title', c.title);
  li.setAttribute('data-updated', c.updated_at);
  li.setAttribute('data-archived', c.archived ? '1' : '0');
  const link = el('a');
  link.href = '/c/' + encodeURIComponent(c.id) + '/';
  link.title = c.title;
  if (current) link.setAttribute('aria-current', 'page');
  const title = el('span', 'conv-title', c.title);
  if (c.pinned) {
    link.append(el('span', 'visually-hidden', 'Pinned: '));
    title.prepend(svgIcon('pin'));
  }
  link.append(title);
  if (typeof c.snippet === 'string' && c.snippet) link.append(snippetEl(c.snippet, c.highlights));
  const actions = el('span', 'conv-actions');
  const base = '/c/' + encodeURIComponent(c.id) + '/';
  actions.append(actionButton('rename', 'Rename', base + 'rename/', c.title), actionButton('delete', 'Delete', base + 'delete/', c.title));
  li.append(link, actions);
  return li;
}

function listUrl(cursor) {
  const params = new URLSearchParams(list.view ? list.view.value : 'source=web,import');
  const q = list.search ? list.search.value.trim() : '';
  if (q) params.set('q', q);
  if (cursor) params.set('cursor', cursor);
  return LIST_URL + '?' + params.toString();
}

function showMore(next) {
  list.next = next;
  if (list.more) list.more.hidden = !next;
}

/** Load a page: `replace` starts the list over (a new search or view), else it is the next page. */
function load(replace) {
  const url = replace ? listUrl(null) : list.next;
  if (!url || (!replace && list.nav.hasAttribute('aria-busy'))) return;  // one page at a time
  const ticket = ++list.loading;
  list.nav.setAttribute('aria-busy', 'true');
  fetch(url, { credentials: 'same-origin', headers: { Accept: 'application/json' } })
    .then((response) => (response.ok ? response.json() : Promise.reject(response.status)))
    .then((data) => {
      if (ticket !== list.loading) return;  // a newer search answered first
      const items = data.conversations.map(convItem);
      if (replace) list.ul.replaceChildren(...items);
      else list.ul.append(...items);
      regroup(list.ul);
      showMore(data.next_cursor ? listUrl(data.next_cursor) : null);
      const empty = $('.sidebar-empty', list.nav);
      if (empty) empty.hidden = list.ul.childElementCount > 0;
      if (replace) announceCount(data.conversations.length, Boolean(data.next_cursor));
    })
    .catch(() => { if (ticket === list.loading) list.status.textContent = 'Could not load the chat list.'; })
    .finally(() => { if (ticket === list.loading) list.nav.removeAttribute('aria-busy'); });
}

function announceCount(count, more) {
  const searching = list.search && list.search.value.trim();
  const what = count === 1 ? '1 chat' : count + (more ? '+' : '') + ' chats';
  list.status.textContent = searching ? what + ' found' : what + ' listed';
}

function onViewChange() {
  const heading = $('h2', list.nav);
  if (heading) heading.textContent = HEADINGS[list.view.value] || 'Your chats';
  load(true);
}

function onSearchInput() {
  clearTimeout(list.timer);
  list.timer = setTimeout(() => load(true), SEARCH_DELAY_MS);
}

function onScroll() {
  if (!list.next || list.nav.hasAttribute('aria-busy')) return;
  if (list.nav.scrollHeight - list.nav.scrollTop - list.nav.clientHeight < LOAD_MORE_PX) load(false);
}

function initList() {
  list.nav = $('.sidebar-nav');
  list.ul = list.nav ? $('.conv-list', list.nav) : null;
  if (!list.ul) return;
  list.more = $('#chat-more');
  list.status = $('#chat-list-status');
  list.search = $('#chat-search');
  list.view = $('#chat-view');
  const first = list.ul.getAttribute('data-next-url');
  showMore(first || null);
  if (list.more) list.more.addEventListener('click', () => load(false));
  list.nav.addEventListener('scroll', onScroll, { passive: true });
  if (list.search) {
    list.search.addEventListener('input', onSearchInput);
    list.search.form.addEventListener('submit', (event) => {
      event.preventDefault();
      clearTimeout(list.timer);
      load(true);
    });
  }
  if (list.view) list.view.addEventListener('change', onViewChange);
}
