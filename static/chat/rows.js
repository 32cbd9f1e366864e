/* The chat list's rows: date groups (Pinned, Today, Yesterday, Previous 7 days,
 * Previous 30 days, Older) and Pin / Archive on each row, each saying what it
 * did, with Undo (docs/history.md).
 *
 * The order stays the server's (pinned, then newest activity): groups only put
 * headings between runs of rows. A row's flags change through the same
 * endpoints as the chat's ⋯ menu, as JSON; the list is then fetched again.
 */
import { $, csrfToken, el, svgIcon } from './dom.js';
import { announce } from './clipboard.js';

const DAY_MS = 24 * 60 * 60 * 1000;
const TOAST_MS = 8000;

/** The group a row belongs in, by its pin and its last activity in the viewer's own time zone. */
function groupOf(li, today) {
  if (li.classList.contains('pinned')) return 'Pinned';
  const updated = new Date(li.getAttribute('data-updated'));
  if (isNaN(updated)) return 'Older';
  const day = new Date(updated.getFullYear(), updated.getMonth(), updated.getDate());
  const days = Math.round((today - day) / DAY_MS);
  if (days <= 0) return 'Today';
  if (days === 1) return 'Yesterday';
  if (days < 7) return 'Previous 7 days';
  if (days < 30) return 'Previous 30 days';
  return 'Older';
}

/** Put a heading before each run of rows of one group, and Pin / Archive on rows that lack them. */
export function regroup(ul) {
  if (!ul) return;
  for (const heading of ul.querySelectorAll(':scope > .conv-group')) heading.remove();
  const now = new Date();
  const today = new Date(now.getFullYear(), now.getMonth(), now.getDate());
  let last = null;
  for (const li of Array.from(ul.children)) {
    addFlagButtons(li);
    const group = groupOf(li, today);
    if (group === last) continue;
    const heading = el('li', 'conv-group');
    heading.append(el('h3', null, group));
    ul.insertBefore(heading, li);
    last = group;
  }
}

function flagButton(li, flag, on) {
  const verbs = { pinned: ['Pin', 'Unpin'], archived: ['Archive', 'Unarchive'] }[flag];
  const label = verbs[on ? 1 : 0];
  const title = li.getAttribute('data-title') || 'this chat';
  const button = el('button', 'icon-btn');
  button.type = 'button';
  button.setAttribute('data-flag', flag);
  button.setAttribute('data-on', on ? '1' : '0');
  button.setAttribute('aria-label', label + ' ' + title);
  button.title = label;
  button.append(svgIcon(flag === 'pinned' ? 'pin' : 'archive'));
  return button;
}

function addFlagButtons(li) {
  const actions = $('.conv-actions', li);
  if (!actions || $('[data-flag]', actions)) return;
  const pinned = li.classList.contains('pinned');
  const archived = li.getAttribute('data-archived') === '1';
  actions.prepend(flagButton(li, 'pinned', pinned), flagButton(li, 'archived', archived));
}

async function setFlag(id, flag, value) {
  const action = { pinned: value ? 'pin' : 'unpin', archived: value ? 'archive' : 'unarchive' }[flag];
  const response = await fetch('/c/' + encodeURIComponent(id) + '/' + action + '/', {
    method: 'POST',
    credentials: 'same-origin',
    headers: { Accept: 'application/json', 'X-CSRFToken': csrfToken() }
  });
  if (!response.ok) throw new Error('The chat could not be changed; try again.');
  return response.json();
}

// What a change says; the ones that take a chat out of sight or out of its place offer Undo.
const SAID = {
  'pinned 1': ['Pinned “%”.', false],
  'pinned 0': ['Unpinned “%”.', true],
  'archived 1': ['Archived “%”: it is in the Archived view of the list.', true],
  'archived 0': ['“%” is back in your chats.', false]
};

/** A note under the top bar, as the server's flash messages look, with Undo when `undo` is given. */
function toast(text, undo) {
  const box = $('#toasts');
  if (!box) return;
  const alert = el('div', 'alert info');
  alert.append(svgIcon('alert'), el('span', 'alert-text', text));
  if (undo) {
    const button = el('button', 'btn alert-undo', 'Undo');
    button.type = 'button';
    button.addEventListener('click', () => { alert.remove(); undo(); });
    alert.append(button);
  }
  const close = el('button', 'icon-btn');
  close.type = 'button';
  close.setAttribute('aria-label', 'Dismiss');
  close.append(svgIcon('close'));
  close.addEventListener('click', () => alert.remove());
  alert.append(close);
  box.replaceChildren(alert);
  announce(text);
  setTimeout(() => { if (!alert.contains(document.activeElement)) alert.remove(); }, TOAST_MS);
}

/** Pin / Archive pressed on a row: change it, fetch the list again, and say so (with Undo). */
export function initRows({ reload }) {
  const ul = $('.sidebar-nav .conv-list');
  if (!ul) return;
  const change = async (id, title, flag, value, undoable) => {
    try {
      await setFlag(id, flag, value);
    } catch (error) {
      toast(error.message, null);
      return;
    }
    reload();
    const [text, offersUndo] = SAID[flag + ' ' + (value ? 1 : 0)];
    toast(text.replace('%', title), undoable && offersUndo ? () => change(id, title, flag, !value, false) : null);
  };
  ul.addEventListener('click', (event) => {
    const button = event.target.closest('button[data-flag]');
    if (!button) return;
    const li = button.closest('li.conv');
    const flag = button.getAttribute('data-flag');
    change(li.getAttribute('data-id'), li.getAttribute('data-title') || 'this chat', flag, button.getAttribute('data-on') !== '1', true);
  });
  regroup(ul);
}
