/* The transcript: message bubbles, their rendering, status line and actions.
 *
 * Rendering is batched: token frames only mark a message dirty, and one
 * requestAnimationFrame callback renders what changed, at most once a frame.
 * A streaming reply re-renders only its unfinished tail (markdown.js). The
 * transcript is not a live region: a screen reader hears a reply once, when
 * it has finished, through #reply-announcer, not every frame of it.
 */
import { $, $all, el, setText, svgIcon, setUnavailable } from './dom.js';
import { announce, copyText } from './clipboard.js';
import { render, renderStreaming } from './markdown.js';
import { state } from './state.js';

const NEAR_BOTTOM_PX = 96;
const BADGES = { cancelled: 'Stopped', interrupted: 'Interrupted', error: 'Error' };

export const transcript = $('#transcript');
const scroller = $('#scroller');
const log = $('#conversation-log');
const jump = $('#jump');
const messageTemplate = $('#message-template');
const actionHandlers = {};
const refreshHooks = [];

export function messageEl(id) {
  if (id === undefined || id === null || !transcript) return null;
  return transcript.querySelector('li.msg[data-id="' + CSS.escape(String(id)) + '"]');
}

export function rawText(li) {
  if (li._raw === undefined) li._raw = $('.md', li).textContent;
  return li._raw;
}

export function setRaw(li, text) { li._raw = text; }

function nearBottom() { return scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < NEAR_BOTTOM_PX; }

export function scrollToBottom() { if (scroller) scroller.scrollTop = scroller.scrollHeight; }

export function hideEmptyStates() { for (const node of $all('[data-empty-state]')) node.remove(); }

/** A new message bubble (from the <template>), placed in id order. */
export function createMessage(role, id) {
  hideEmptyStates();
  const li = messageTemplate.content.firstElementChild.cloneNode(true);
  li.classList.add('msg-' + role);
  li.setAttribute('data-role', role);
  li.setAttribute('data-id', String(id));
  $('.msg-author', li).textContent = role === 'user' ? 'You said:' : 'Assistant said:';
  li._raw = '';
  const before = $all('li.msg[data-id]', transcript).find((other) => Number(other.getAttribute('data-id')) > Number(id));
  transcript.insertBefore(li, before || null);
  return li;
}

export function removeMessage(id) {
  const li = messageEl(id);
  if (li) li.remove();
}

const dirty = new Set();
let frameRequested = false;

/** Render `li` in the next animation frame (once, however many frames of text arrived). */
export function scheduleRender(li) {
  dirty.add(li);
  if (frameRequested) return;
  frameRequested = true;
  requestAnimationFrame(() => {
    frameRequested = false;
    const stick = nearBottom();
    dirty.forEach(renderMessage);
    dirty.clear();
    if (stick) scrollToBottom();
    updateJump();
  });
}

export function renderMessage(li) {
  if (!li.isConnected) return;
  const body = $('.md', li);
  const text = rawText(li);
  const streaming = li.getAttribute('data-status') === 'streaming';
  if (streaming && text === '') {
    if (!$('.typing', body)) {
      const typing = el('span', 'typing');
      typing.setAttribute('aria-label', 'The assistant is typing');
      typing.setAttribute('role', 'img');
      typing.append(el('span'), el('span'), el('span'));
      body.replaceChildren(typing);
      body._stream = null;
    }
    body.classList.add('md-rendered');
  } else if (streaming) {
    renderStreaming(text, body);
  } else {
    render(text, body);
  }
  renderMeta(li);
}

function plural(n, word) { return n + ' ' + word + (n === 1 ? '' : 's'); }

function liveBadgeText(li) {
  const queued = li.getAttribute('data-queued');
  if (queued) {
    // `position` is the 1-based place in the model's queue.
    const ahead = Math.max((parseInt(queued, 10) || 1) - 1, 0);
    return ahead > 0 ? 'Waiting — ' + ahead + ' ahead of you' : 'Waiting — you are next';
  }
  if (!state.connected && state.opened) return 'Reconnecting…';
  return rawText(li) ? 'Writing…' : 'Thinking…';
}

function renderMeta(li) {
  const meta = $('.msg-meta', li);
  if (!meta || li.getAttribute('data-role') !== 'assistant') return;
  const status = li.getAttribute('data-status');
  if (status === 'streaming') {
    // Only the badge's text changes while a reply streams, not the nodes.
    let badge = $('.badge-live', meta);
    if (!badge || meta.childElementCount !== 1) {
      badge = el('span', 'badge badge-live');
      meta.replaceChildren(badge);
    }
    setText(badge, liveBadgeText(li));
    return;
  }
  const parts = [];
  if (BADGES[status]) parts.push(el('span', 'badge badge-' + status, BADGES[status]));
  // Which model wrote it: the chat's model can change between turns.
  const model = li.getAttribute('data-model');
  if (model) parts.push(el('span', 'msg-model', model));
  const tokens = parseInt(li.getAttribute('data-tokens'), 10);
  const tps = parseFloat(li.getAttribute('data-tps'));
  const duration = parseInt(li.getAttribute('data-duration'), 10);
  if (!isNaN(tokens)) parts.push(el('span', null, plural(tokens, 'token')));
  if (!isNaN(tps) && tps > 0) parts.push(el('span', null, tps.toFixed(1) + ' tok/s'));
  if (!isNaN(duration) && duration > 0) parts.push(el('span', null, (duration / 1000).toFixed(1) + ' s'));
  if (li.getAttribute('data-finish') === 'length') parts.push(el('span', null, 'hit the token limit'));
  const nodes = [];
  parts.forEach((part, index) => {
    if (index > 0) {
      const sep = el('span', 'sep', ' · ');
      sep.setAttribute('aria-hidden', 'true');
      nodes.push(sep);
    }
    nodes.push(part);
  });
  meta.replaceChildren(...nodes);
}

function lastAssistant() {
  const all = $all('li.msg-assistant', transcript);
  return all.length ? all[all.length - 1] : null;
}

const ACTION_LABELS = {
  copy: ['Copy', 'Copy reply'],
  regenerate: ['Regenerate', 'Regenerate this reply'],
  continue: ['Continue', 'Continue this reply from where it stopped']
};

function actionButton(li, action) {
  const button = el('button', 'link-btn');
  button.type = 'button';
  button.setAttribute('data-action', action);
  const [text, label] = ACTION_LABELS[action];
  button.append(svgIcon(action), el('span', null, text));
  button.setAttribute('aria-label', action === 'copy' && li.getAttribute('data-role') === 'user' ? 'Copy your message' : label);
  return button;
}

/** Whether a reply was cut short (by its length, a stop or a restart), so Continue can extend it. */
function cutShort(li) {
  const status = li.getAttribute('data-status');
  return Boolean(rawText(li)) && (li.getAttribute('data-finish') === 'length' || status === 'cancelled' || status === 'interrupted');
}

/** Copy on every finished message; Regenerate on the last reply only, and Continue when it was cut short. */
export function refreshActions() {
  if (!transcript) return;
  const last = lastAssistant();
  for (const li of $all('li.msg', transcript)) {
    const actions = $('.msg-actions', li);
    const streaming = li.getAttribute('data-status') === 'streaming';
    const wanted = [];
    if (!streaming && rawText(li)) wanted.push('copy');
    if (li === last && !streaming && !state.live) {
      if (cutShort(li)) wanted.push('continue');
      wanted.push('regenerate');
    }
    const have = $all('button', actions).map((b) => b.getAttribute('data-action'));
    if (have.join() !== wanted.join()) actions.replaceChildren(...wanted.map((action) => actionButton(li, action)));
    for (const button of $all('[data-action=regenerate], [data-action=continue]', actions)) setUnavailable(button, !state.connected);
    for (const hook of refreshHooks) hook(li);
  }
}

/** `hook(li)` runs for each message whenever the actions are refreshed (feedback.js adds its thumbs). */
export function onRefresh(hook) { refreshHooks.push(hook); }

/** A stored message (the API's JSON) onto its element: its text, status, counts and timing. */
export function setStored(li, message) {
  setRaw(li, message.content || '');
  setStatus(li, message.status, {
    finish: message.finish_reason,
    tokens: message.completion_tokens,
    tps: message.tokens_per_s,
    duration: message.duration_ms
  });
}

/** The stored fields of a message onto its element. */
export function setStatus(li, status, fields) {
  const wasStreaming = li.getAttribute('data-status') === 'streaming';
  li.setAttribute('data-status', status);
  for (const key of ['finish', 'tokens', 'tps', 'duration']) {
    const value = fields && fields[key];
    if (value === undefined || value === null || value === '') li.removeAttribute('data-' + key);
    else li.setAttribute('data-' + key, String(value));
  }
  li.removeAttribute('data-queued');
  updateBusy();
  if (wasStreaming && status !== 'streaming' && li.getAttribute('data-role') === 'assistant') {
    const note = BADGES[status] ? ' (' + BADGES[status].toLowerCase() + ')' : '';
    announce('Assistant said' + note + ': ' + rawText(li), 'reply-announcer');
  }
}

/** aria-busy on the conversation while any reply in it is being written. */
function updateBusy() {
  if (!log) return;
  const busy = Boolean(transcript.querySelector('li.msg[data-status=streaming]'));
  if (busy) log.setAttribute('aria-busy', 'true');
  else log.removeAttribute('aria-busy');
}

export function updateJump() {
  if (!jump) return;
  jump.hidden = nearBottom() || !transcript || !transcript.children.length;
}

/** `handler(li)` runs when a message's action button (copy, regenerate) is pressed. */
export function onAction(action, handler) { actionHandlers[action] = handler; }

function onActionClick(event) {
  const button = event.target.closest('button[data-action]');
  if (!button || button.getAttribute('aria-disabled') === 'true') return;
  const li = button.closest('li.msg');
  const action = button.getAttribute('data-action');
  if (action === 'copy') {
    copyText(rawText(li)).then((ok) => {
      const label = $('span', button);
      label.textContent = ok ? 'Copied' : 'Copy failed';
      announce(ok ? 'Copied to the clipboard' : 'Could not copy');
      setTimeout(() => { label.textContent = 'Copy'; }, 2000);
    });
  } else if (actionHandlers[action]) {
    actionHandlers[action](li);
  }
}

export function initTranscript() {
  if (scroller) scroller.addEventListener('scroll', updateJump, { passive: true });
  if (jump) {
    $('button', jump).addEventListener('click', () => {
      scrollToBottom();
      const input = $('#composer-input');
      if (input) input.focus();
    });
  }
  if (!transcript) return;
  transcript.addEventListener('click', onActionClick);
  // The server rendered the text escaped; render it as Markdown now.
  for (const li of $all('li.msg', transcript)) {
    rawText(li);
    renderMessage(li);
  }
  updateBusy();
  const streaming = $all('li.msg[data-status=streaming]', transcript);
  if (streaming.length) state.live = streaming[streaming.length - 1];
  scrollToBottom();
  updateJump();
}
