/* Branches: edit a message and resend it, flip between variants ("‹ 2 / 3 ›"),
 * and follow the active path the server chose (the `path` frame).
 *
 * The tree is the server's (conversations/tree.py): every message carries
 * `parent` and `siblings`, kept on its <li> as data-parent / data-siblings.
 * Editing sends an `edit` frame, an arrow a `switch`; every tab then gets the
 * same frames, so each follows along. Controls live in their own
 * `.msg-branches` span of the message's foot, next to the transcript's actions.
 */
import { $, $all, el, isUnavailable, setUnavailable, svgIcon } from './dom.js';
import { announce } from './clipboard.js';
import { state, changed } from './state.js';
import {
  createMessage, messageEl, rawText, refreshActions, renderMessage, scrollToBottom, setStored, transcript
} from './transcript.js';

function siblingsOf(li) {
  const raw = li.getAttribute('data-siblings') || '';
  return raw ? raw.split(',').map(Number) : [];
}

/** Record where a message sits in the tree (from a frame or the API). */
export function placeMessage(li, message) {
  if (!li) return;
  if (Array.isArray(message.siblings)) li.setAttribute('data-siblings', message.siblings.join(','));
  if (message.parent !== undefined) li.setAttribute('data-parent', message.parent === null ? '' : String(message.parent));
}

/** A new message on another branch: what followed its parent here is no longer on the path. */
function pruneAfterParent(li) {
  if (!li || !li.hasAttribute('data-parent')) return;
  const parentId = li.getAttribute('data-parent');
  const parent = parentId ? messageEl(parentId) : null;
  if (parentId && !parent) return;  // this tab is behind; the sync after `end` catches up
  let removing = !parent;
  for (const other of $all('li.msg[data-id]', transcript)) {
    if (other === parent) { removing = true; continue; }
    if (removing && other !== li && other !== state.live) other.remove();
  }
}

function onMessageFrame(frame) {
  const message = frame.message || {};
  const li = messageEl(message.id);
  placeMessage(li, message);
  pruneAfterParent(li);
  refreshBranches();
}

function onStartFrame(frame) {
  const li = messageEl(frame.message_id);
  placeMessage(li, frame);
  refreshBranches();
}

/** The active path changed (a switch in this tab or another): show it instead. */
function onPathFrame(frame) {
  if (!Array.isArray(frame.messages)) return;
  const focused = focusedControl();
  const wanted = new Set(frame.messages.map((m) => String(m.id)));
  for (const li of $all('li.msg[data-id]', transcript)) {
    if (!wanted.has(li.getAttribute('data-id'))) li.remove();
  }
  for (const message of frame.messages) {
    if (message.role === 'system') continue;
    showStored(message);
  }
  refreshBranches();
  changed();
  restoreFocus(focused);
  announce('Showing another version of the conversation');
}

function showStored(message) {
  const li = messageEl(message.id) || createMessage(message.role, message.id);
  placeMessage(li, message);
  if (message.status === 'streaming') return;
  setStored(li, message);
  renderMessage(li);
}

/** The API's copy of the path (socket.js syncs with it): keep each message's place, and drop
 * a branch this tab still shows that another tab switched away from while this one was offline. */
function onSynced(data) {
  const messages = data.messages || [];
  for (const message of messages) placeMessage(messageEl(message.id), message);
  const known = new Set(messages.map((m) => String(m.id)));
  const places = new Set(messages.map((m) => (m.parent === null ? '' : String(m.parent)) + '|' + m.role));
  // The API sent the newest page of the path: earlier messages shown here are not its to judge.
  const oldest = messages.length ? Number(messages[0].id) : 0;
  let offPath = false;
  for (const li of $all('li.msg[data-id]', transcript)) {
    if (Number(li.getAttribute('data-id')) < oldest) continue;
    if (known.has(li.getAttribute('data-id')) || li === state.live) continue;
    // A sibling of a message on the path, and whatever followed it here.
    offPath = offPath || places.has((li.getAttribute('data-parent') || '') + '|' + li.getAttribute('data-role'));
    if (offPath) li.remove();
  }
  refreshBranches();
}

// ---- the controls ----

function button(className, label, iconName, text) {
  const node = el('button', 'link-btn ' + className);
  node.type = 'button';
  node.setAttribute('aria-label', label);
  if (iconName) node.append(svgIcon(iconName));
  if (text) node.append(el('span', iconName ? null : 'arrow', text));
  return node;
}

function controlsFor(li) {
  const nodes = [];
  const siblings = siblingsOf(li);
  const id = Number(li.getAttribute('data-id'));
  const index = siblings.indexOf(id);
  const what = li.getAttribute('data-role') === 'user' ? 'message' : 'reply';
  if (siblings.length > 1 && index >= 0) {
    const prev = button('branch-prev', 'Previous version of this ' + what, null, '‹');
    prev.setAttribute('data-switch', String(siblings[index - 1] || ''));
    const count = el('span', 'branch-count');
    count.append(el('span', 'visually-hidden', 'Version '), document.createTextNode((index + 1) + ' / ' + siblings.length));
    const next = button('branch-next', 'Next version of this ' + what, null, '›');
    next.setAttribute('data-switch', String(siblings[index + 1] || ''));
    if (index === 0) setUnavailable(prev, true);
    if (index === siblings.length - 1) setUnavailable(next, true);
    nodes.push(prev, count, next);
  }
  if (li.getAttribute('data-role') === 'user' && !li.classList.contains('editing')) {
    const edit = button('branch-edit', 'Edit your message', 'pencil', null);
    edit.append(el('span', null, 'Edit'));
    nodes.push(edit);
  }
  return nodes;
}

/** Draw each message's arrows and edit button; unavailable while a reply streams or offline. */
export function refreshBranches() {
  if (!transcript) return;
  const busy = Boolean(state.live) || !state.connected;
  for (const li of $all('li.msg[data-id]', transcript)) {
    const foot = $('.msg-foot', li);
    if (!foot) continue;
    let box = $('.msg-branches', foot);
    if (!box) {
      box = el('span', 'msg-branches');
      foot.prepend(box);
    }
    const key = [li.getAttribute('data-siblings'), li.classList.contains('editing')].join('|');
    if (box.getAttribute('data-key') !== key) {
      box.setAttribute('data-key', key);
      box.replaceChildren(...controlsFor(li));
    }
    for (const control of $all('button', box)) {
      const edge = control.hasAttribute('data-switch') && !control.getAttribute('data-switch');
      setUnavailable(control, busy || edge);
    }
  }
}

function focusedControl() {
  const active = document.activeElement;
  if (!active || !transcript.contains(active)) return null;
  const li = active.closest('li.msg');
  const kind = ['branch-prev', 'branch-next', 'branch-edit'].find((name) => active.classList.contains(name));
  return li && kind ? { parent: li.getAttribute('data-parent'), role: li.getAttribute('data-role'), kind } : null;
}

/** After a switch, focus the same arrow on the version now shown (it has the same parent and role). */
function restoreFocus(focused) {
  if (!focused) return;
  const li = $all('li.msg[data-id]', transcript).find((other) => other.getAttribute('data-parent') === focused.parent
    && other.getAttribute('data-role') === focused.role);
  const target = li && ($('.' + focused.kind, li) || $('.branch-prev, .branch-next', li));
  if (target) target.focus();
}

// ---- editing ----

function startEditing(li) {
  if (li.classList.contains('editing')) return;
  li.classList.add('editing');
  const bubble = $('.bubble', li);
  const label = el('label', 'visually-hidden', 'Edit your message (Enter sends, Escape cancels)');
  const area = el('textarea', 'edit-input');
  area.id = 'edit-' + li.getAttribute('data-id');
  label.htmlFor = area.id;
  area.value = rawText(li);
  area.rows = Math.min(10, Math.max(2, area.value.split('\n').length));
  // Visible controls too: Enter and Escape are not everybody's first guess.
  const cancel = el('button', 'btn', 'Cancel');
  const save = el('button', 'btn btn-primary', 'Send');
  cancel.type = save.type = 'button';
  cancel.addEventListener('click', () => stopEditing(li, true));
  save.addEventListener('click', () => resend(li, area.value));
  const actions = el('div', 'edit-actions');
  actions.append(cancel, save);
  const form = el('div', 'edit-box');
  form.append(label, area, actions);
  bubble.hidden = true;
  bubble.after(form);
  refreshBranches();
  area.focus();
  area.addEventListener('keydown', (event) => {
    if (event.key === 'Escape') {
      event.preventDefault();
      stopEditing(li, true);
    } else if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      resend(li, area.value);
    }
  });
}

function stopEditing(li, returnFocus) {
  const box = $('.edit-box', li);
  if (box) box.remove();
  $('.bubble', li).hidden = false;
  li.classList.remove('editing');
  refreshBranches();
  if (returnFocus) {
    const edit = $('.branch-edit', li);
    if (edit) edit.focus();
  }
}

function resend(li, text) {
  if (!text.trim() || state.live) return;
  if (state.send({ type: 'edit', message_id: Number(li.getAttribute('data-id')), content: text })) {
    stopEditing(li, false);
    const input = $('#composer-input');
    if (input) input.focus();  // the edited message is replaced; Stop is next to the composer
    scrollToBottom();
  }
}

function onClick(event) {
  const control = event.target.closest('.msg-branches button');
  if (!control || isUnavailable(control)) return;
  const li = control.closest('li.msg');
  if (control.classList.contains('branch-edit')) startEditing(li);
  else if (control.getAttribute('data-switch')) state.send({ type: 'switch', message_id: Number(control.getAttribute('data-switch')) });
}

/** `onFrame(type, handler)` is socket.js's hook for frames and syncs. */
export function initBranches(onFrame) {
  if (!transcript) return;
  transcript.addEventListener('click', onClick);
  onFrame('message', onMessageFrame);
  onFrame('start', onStartFrame);
  onFrame('path', onPathFrame);
  onFrame('synced', onSynced);
  refreshBranches();
  refreshActions();
}
