/* The composer (message box, Send/Stop button), the settings form's values,
 * inline errors, and the first message of a new chat.
 *
 * The Send button turns into Stop and back; it is never `disabled` (that
 * would drop keyboard focus), only aria-disabled while it cannot act.
 */
import { $, $all, el, setText, svgIcon, setUnavailable, isUnavailable } from './dom.js';
import { openSettings, closeSettings } from './panels.js';
import { page, state, changed } from './state.js';
import { refreshActions, hideEmptyStates, transcript } from './transcript.js';

const PENDING_KEY = 'chatsite:first-message';
const PENDING_MAX_AGE_MS = 5 * 60 * 1000;
const PARAMS = ['temperature', 'top_p', 'max_new_tokens', 'repetition_penalty'];
// The code of the error a message over the length limit gets, so typing it short again clears it.
const TOO_LONG = 'too_long';

const form = $('#composer');
export const input = $('#composer-input');
const sendButton = $('#send-button');
const sendLabel = sendButton ? $('.send-label', sendButton) : null;
const hint = $('#composer-status');
const charCount = $('#char-count');
const errors = $('#errors');
const settingsForm = $('#settings-form');

// ---- settings ----

function paramInput(name) { return settingsForm ? $('[data-param="' + name + '"]', settingsForm) : null; }

/** The slider follows the number typed beside it: to its end when the number is out of range (a slider
 * clamps what it is given), and the number is marked invalid, so the two never seem to disagree. */
function syncPair(number) {
  const range = $('input[type=range][data-for="' + number.id + '"]');
  if (range && number.value !== '' && Number.isFinite(Number(number.value))) range.value = number.value;
  number.setAttribute('aria-invalid', String(!number.checkValidity()));
}

function initSettingsForm() {
  if (!settingsForm) return;
  for (const range of $all('input[type=range][data-for]', settingsForm)) {
    const number = document.getElementById(range.getAttribute('data-for'));
    range.addEventListener('input', () => { number.value = range.value; syncPair(number); });
    number.addEventListener('input', () => syncPair(number));
  }
  settingsForm.addEventListener('submit', (event) => {
    event.preventDefault();
    if (settingsForm.reportValidity()) closeSettings(true);
  });
  const reset = $('#settings-reset');
  if (!reset) return;
  reset.addEventListener('click', () => {
    for (const name of PARAMS) {
      const field = paramInput(name);
      if (!field) continue;
      field.value = field.getAttribute('data-default');
      syncPair(field);
    }
  });
}

/** The settings as `params`, or null (and the panel opened on the bad field). */
export function readParams() {
  const params = {};
  for (const name of PARAMS) {
    const field = paramInput(name);
    if (!field) continue;
    if (!field.checkValidity() || field.value === '') {
      openSettings();
      field.focus();
      field.reportValidity();
      return null;
    }
    params[name] = name === 'max_new_tokens' ? parseInt(field.value, 10) : parseFloat(field.value);
  }
  // The model picker: a change applies from the next turn on (the server makes it the chat's model).
  const model = settingsForm ? $('#set-model', settingsForm) : null;
  if (model && model.value) params.model = model.value;
  return params;
}

// ---- the box and the button ----

function autoGrow() {
  input.style.height = 'auto';
  input.style.height = Math.min(input.scrollHeight + 2, Math.round(window.innerHeight * 0.4)) + 'px';
}

function updateCount() {
  const length = input.value.length;
  // The box is short enough again: the error that said it was not goes.
  if (length <= page.maxChars && errors) $all('.alert[data-code="' + TOO_LONG + '"]', errors).forEach((alert) => alert.remove());
  if (!charCount) return;
  if (length > page.maxChars * 0.8) {
    setText(charCount, length + ' / ' + page.maxChars);
    charCount.classList.toggle('over', length > page.maxChars);
  } else {
    setText(charCount, '');
  }
}

/** Put text back into an empty box (a message that was not sent). */
export function refill(text) {
  if (input.value.trim()) return;
  input.value = text;
  autoGrow();
  updateCount();
}

export function updateComposer() {
  if (!sendButton) return;
  const onPage = Boolean(page.conversationId);
  const live = Boolean(state.live);
  sendButton.classList.toggle('is-stop', live);
  sendButton.classList.toggle('btn-primary', !live);
  const icon = live ? 'stop' : 'send';
  if (!sendButton.firstElementChild.classList.contains('icon-' + icon)) {
    sendButton.replaceChild(svgIcon(icon), sendButton.firstElementChild);
  }
  if (live) {
    sendButton.type = 'button';
    setText(sendLabel, state.stopping ? 'Stopping…' : 'Stop');
    sendButton.setAttribute('aria-label', 'Stop generating');
    setUnavailable(sendButton, !state.connected || state.stopping);
    setText(hint, 'Writing a reply: stop it, or wait to send your next message.');
  } else {
    sendButton.type = 'submit';
    setText(sendLabel, state.unacked !== null ? 'Sending…' : 'Send');
    sendButton.setAttribute('aria-label', 'Send message');
    setUnavailable(sendButton, (onPage && !state.connected) || state.unacked !== null);
    setText(hint, onPage && !state.connected && !state.finalClose
      ? (state.opened ? 'Offline: your message waits here until the connection is back.' : 'Connecting…')
      : '');
  }
  refreshActions();
}

// ---- errors (#errors is role=alert and always on the page) ----

export function showError(message, code) {
  if (!errors) return;
  const alert = el('div', 'alert');
  alert.setAttribute('data-code', code || '');
  alert.append(svgIcon('alert'), el('span', 'alert-text', message));
  const close = el('button', 'icon-btn');
  close.type = 'button';
  close.setAttribute('data-dismiss', '');
  close.setAttribute('aria-label', 'Dismiss error');
  close.appendChild(svgIcon('close'));
  alert.appendChild(close);
  // Keep a few: a burst of errors must not push the composer off screen.
  while (errors.children.length >= 3) errors.firstElementChild.remove();
  errors.appendChild(alert);
}

function clearErrors() { if (errors) errors.replaceChildren(); }

// ---- actions ----

export function submitMessage() {
  const text = input.value;
  if (!text.trim()) return false;
  if (text.length > page.maxChars) {
    showError('A message can have at most ' + page.maxChars + ' characters (this one has ' + text.length + ').', TOO_LONG);
    return false;
  }
  if (state.live || state.unacked !== null) return false;
  const params = readParams();
  if (!params) return false;
  if (!state.send({ type: 'send', content: text, params })) return false;
  clearErrors();
  state.unacked = text;
  input.value = '';
  autoGrow();
  updateCount();
  changed();
  return true;
}

/** A send the server refused: its text goes back into the box. */
export function restoreUnacked() {
  if (state.unacked === null) return;
  refill(state.unacked);
  state.unacked = null;
}

function stopReply() {
  if (!state.live || state.stopping) return;
  if (state.send({ type: 'stop' })) {
    state.stopping = true;
    changed();
  }
}

export function regenerate() {
  if (state.live) return;
  const params = readParams();
  if (!params) return;
  if (state.send({ type: 'regenerate', params })) {
    clearErrors();
    // The pressed button goes away with the old reply; Stop is where it can be stopped.
    sendButton.focus();
  }
}

/** Extend the last reply from where it was cut short, on the model that wrote it. */
export function continueReply() {
  if (state.live) return;
  const params = readParams();
  if (!params) return;
  delete params.model;
  if (state.send({ type: 'continue', params })) {
    clearErrors();
    sendButton.focus();
  }
}

/** The server caps a new chat's system prompt too; saying so here keeps the text on the page. */
function systemPromptFits() {
  const field = $('#set-system');
  if (!field || field.readOnly || field.value.length <= page.maxSystemChars) return true;
  const count = (n) => n.toLocaleString('en');
  showError('A system prompt can have at most ' + count(page.maxSystemChars) + ' characters (this one has ' +
    count(field.value.length) + ').', 'invalid');
  openSettings();
  field.focus();
  return false;
}

function onSubmit(event) {
  if (!page.conversationId) {
    // A new chat: the form posts the settings to /c/new/, which redirects
    // to the conversation; its page sends the message once its socket is up.
    if (form.getAttribute('data-submitting') || !input.value.trim()) { event.preventDefault(); return; }
    if (input.value.length > page.maxChars) { event.preventDefault(); submitMessage(); return; }
    if (settingsForm && !readParams()) { event.preventDefault(); return; }
    if (!systemPromptFits()) { event.preventDefault(); return; }
    try {
      sessionStorage.setItem(PENDING_KEY, JSON.stringify({ content: input.value, at: Date.now() }));
    } catch (e) { /* the chat is still created; the text just is not carried over */ }
    form.setAttribute('data-submitting', '1'); // one chat per Enter, however impatient
    setUnavailable(sendButton, true);
    sendLabel.textContent = 'Starting…';
    return;
  }
  event.preventDefault();
  submitMessage();
}

// ---- the first message of a new chat ----

function takePending() {
  let raw = null;
  try {
    raw = sessionStorage.getItem(PENDING_KEY);
    sessionStorage.removeItem(PENDING_KEY);
  } catch (e) {
    return null;
  }
  if (!raw) return null;
  try {
    const pending = JSON.parse(raw);
    if (typeof pending.content === 'string' && Date.now() - pending.at < PENDING_MAX_AGE_MS) return pending.content;
  } catch (e) { /* a damaged entry is dropped */ }
  return null;
}

let pendingFirst = null;

/** Once connected: send the message typed on the welcome page, if this chat was just made for it. */
export function sendPendingFirst() {
  if (pendingFirst === null) return;
  if (input.value === pendingFirst) submitMessage();
  pendingFirst = null;
}

export function initComposer() {
  initSettingsForm();
  if (!form) return;
  if (!page.conversationId) {
    // Back on the welcome page after /c/new/ refused the settings: keep the text.
    const back = takePending();
    if (back) refill(back);
  } else if (transcript && !$('li.msg', transcript)) {
    pendingFirst = takePending();
    if (pendingFirst) {
      hideEmptyStates();
      refill(pendingFirst);
    }
  }
  input.addEventListener('input', () => { autoGrow(); updateCount(); });
  input.addEventListener('keydown', (event) => {
    if (event.key === 'Enter' && !event.shiftKey && !event.isComposing && event.keyCode !== 229) {
      event.preventDefault();
      form.requestSubmit();
    }
  });
  sendButton.addEventListener('click', (event) => {
    if (state.live) {
      event.preventDefault();
      stopReply();
    } else if (isUnavailable(sendButton)) {
      event.preventDefault();
    }
  });
  form.addEventListener('submit', onSubmit);
  // Suggestions on the welcome screen fill the composer.
  for (const button of $all('[data-suggestion]')) {
    button.addEventListener('click', () => {
      input.value = button.getAttribute('data-suggestion');
      autoGrow();
      updateCount();
      changed();
      input.focus();
    });
  }
  window.addEventListener('pageshow', (event) => {
    // Back from the browser's page cache: nothing is being submitted any more.
    if (!event.persisted) return;
    form.removeAttribute('data-submitting');
    changed();
  });
  autoGrow();
  updateCount();
}
