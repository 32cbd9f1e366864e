/* The chat WebSocket (frames in docs/protocol.md), reconnection, and
 * syncing with the stored transcript.
 *
 * What the server decides stays the server's: a reply's final status comes
 * from the stored message (GET the conversation API after `end`), and so
 * does the title a first message gives the chat (its `message` frame carries it).
 */
import { $, $all, el, setText } from './dom.js';
import { announce } from './clipboard.js';
import { page, state, changed } from './state.js';
import { refill, restoreUnacked, sendPendingFirst, showError } from './composer.js';
import { noteUserMessage, isTitled, moveCurrentUp, showTitle } from './sidebar.js';
import {
  createMessage, messageEl, rawText, removeMessage, scheduleRender, scrollToBottom, setRaw, setStatus, setStored, transcript
} from './transcript.js';

// Messages of the path each sync reads: the newest page (the page shows as many at first).
const SYNC_PAGE = 100;

const status = $('#connection-status');
const banner = $('#connection-banner');
const bannerText = banner ? $('.banner-text', banner) : null;
const bannerCount = banner ? $('.banner-count', banner) : null;
const retryButton = $('#retry-now');

const conn = { socket: null, retries: 0, retryAt: 0, retryTimer: null, countdown: null, unloading: false };

function send(frame) {
  if (!conn.socket || !state.connected) return false;
  conn.socket.send(JSON.stringify(frame));
  return true;
}

// ---- frames ----

/** A chat's first message names it: the frame carries the title, so no page or list fetch is needed. */
function onMessageFrame(frame) {
  if (typeof frame.title === 'string' && frame.title) noteUserMessage(frame.title);
  onMessage(frame.message);
}

function onMessage(message) {
  if (!message || message.id === undefined) return;
  const li = messageEl(message.id) || createMessage(message.role, message.id);
  setRaw(li, message.content || '');
  setStatus(li, message.status || 'complete', {});
  scheduleRender(li);
  if (message.role === 'user') {
    if (state.unacked !== null && message.content === state.unacked) state.unacked = null;
    moveCurrentUp();
    if (!isTitled()) sync();  // the server titles a chat from its first message
    // One's own message goes to the bottom even when scrolled up.
    requestAnimationFrame(scrollToBottom);
  }
  changed();
}

function onStart(frame) {
  if (frame.replaces) removeMessage(frame.replaces);
  const li = messageEl(frame.message_id) || createMessage('assistant', frame.message_id);
  setRaw(li, typeof frame.content === 'string' ? frame.content : '');
  if (frame.model) {
    li.setAttribute('data-model', frame.model);
    const sub = $('#chat-model');  // the chat's model, shown under its title, is this reply's from now on
    if (sub) setText(sub, frame.model);
  }
  setStatus(li, 'streaming', {});
  state.live = li;
  state.stopping = false;
  scheduleRender(li);
  changed();
}

function onQueued(frame) {
  const li = messageEl(frame.message_id);
  if (!li) return;
  li.setAttribute('data-queued', String(frame.position));
  scheduleRender(li);
}

function onToken(frame) {
  let li = messageEl(frame.message_id);
  if (!li) {
    // A token for a reply we never saw start (should not happen): show it anyway.
    li = createMessage('assistant', frame.message_id);
    setStatus(li, 'streaming', {});
    state.live = li;
    changed();
  }
  setRaw(li, rawText(li) + (frame.text || ''));
  li.removeAttribute('data-queued');
  scheduleRender(li);
}

function onEnd(frame) {
  const li = messageEl(frame.message_id);
  if (!li || state.live === li) {
    state.live = null;
    state.stopping = false;
  }
  if (li) li.setAttribute('data-ended', '');
  changed();
  syncEnded(li, 0);
}

/** Read an ended reply's stored status, counts and timing; ask again while it still reads as streaming. */
function syncEnded(li, attempt) {
  sync().then(() => {
    if (!li || !li.isConnected || li.getAttribute('data-status') !== 'streaming' || attempt >= 8) return;
    setTimeout(() => syncEnded(li, attempt + 1), 250 * 2 ** Math.min(attempt, 3));
  });
}

function onErrorFrame(frame) {
  showError(frame.message || 'Something went wrong.', frame.code);
  restoreUnacked();
  if (state.stopping && frame.code === 'invalid') state.stopping = false;
  changed();
}

/** The chat's model wrote its title after the first reply: the top bar, the tab and the list show it. */
function onTitle(frame) {
  if (typeof frame.title === 'string' && frame.title) showTitle(frame.title);
}

const HANDLERS = {
  message: onMessageFrame, start: onStart, queued: onQueued, token: onToken, end: onEnd, error: onErrorFrame, title: onTitle
};
// Other modules' handlers (branches.js, feedback.js), run after the socket's own, for any frame
// type (`feedback` has no handler of the socket's own); `synced` after each sync().
const hooks = {};
export function onFrame(type, handler) { (hooks[type] = hooks[type] || []).push(handler); }
function runHooks(type, data) { for (const handler of hooks[type] || []) handler(data); }

// ---- the stored transcript ----

function applyStored(message) {
  let li = messageEl(message.id);
  // A reply still being written is the socket's (its `start` frame), unless it already ended here.
  if (message.status === 'streaming') return;
  if (!li) li = createMessage(message.role, message.id);
  else if (li.getAttribute('data-status') !== 'streaming' && rawText(li) === (message.content || '')) return;
  setStored(li, message);
  li.removeAttribute('data-ended');
  if (state.live === li) { state.live = null; state.stopping = false; }
  scheduleRender(li);
}

/** Bring the page up to date with the stored conversation: after (re)connecting,
 * after a reply ends, after a chat's first message (its title). */
function sync() {
  if (!page.apiUrl) return Promise.resolve();
  // The newest page of the path is what can have changed; a long transcript's earlier pages stay as shown.
  return fetch(page.apiUrl + '?limit=' + SYNC_PAGE, { credentials: 'same-origin', headers: { Accept: 'application/json' } })
    .then((response) => (response.ok ? response.json() : null))
    .then((data) => {
      if (!data || !Array.isArray(data.messages)) return;
      if (data.messages.some((m) => m.role === 'user')) noteUserMessage(data.title);
      const known = new Set();
      let maxId = 0;
      const oldest = data.messages.length ? Number(data.messages[0].id) : 0;
      for (const message of data.messages) {
        if (message.role === 'system') continue;
        known.add(String(message.id));
        maxId = Math.max(maxId, Number(message.id));
        applyStored(message);
      }
      // Replies replaced (regenerated) elsewhere while we were away.
      for (const li of $all('li.msg[data-id]', transcript)) {
        const id = Number(li.getAttribute('data-id'));
        if (!known.has(String(id)) && id < maxId && id > oldest && li !== state.live) li.remove();
      }
      runHooks('synced', data);
      if (state.maybeSent !== null) {
        // Sent just before the connection dropped: stored or lost?
        const users = data.messages.filter((m) => m.role === 'user');
        const lastUser = users[users.length - 1];
        if (!(lastUser && lastUser.content === state.maybeSent)) refill(state.maybeSent);
        state.maybeSent = null;
      }
      changed();
    })
    .catch(() => { /* the socket's frames still work; try again on the next connect */ });
}

// ---- the banner (#connection-status is role=status and always on the page) ----

/** `count` (the seconds left) is shown but not announced, so a screen reader hears the message once. */
function setBanner(text, showRetry, count) {
  if (!banner) return;
  banner.hidden = false;
  setText(bannerText, text);
  setText(bannerCount, count || '');
  retryButton.hidden = !showRetry;
  banner.classList.toggle('final', state.finalClose);
}

function hideBanner() {
  if (banner) {
    banner.hidden = true;
    setText(bannerText, '');
  }
  clearInterval(conn.countdown);
}

// ---- the connection ----

function socketUrl() {
  const scheme = window.location.protocol === 'https:' ? 'wss:' : 'ws:';
  return scheme + '//' + window.location.host + '/ws/chat/' + encodeURIComponent(page.conversationId) + '/';
}

function onOpen() {
  const reconnected = state.opened;
  state.connected = true;
  state.opened = true;
  conn.retries = 0;
  hideBanner();
  if (reconnected) announce('Connection restored');
  sync();
  for (const li of $all('li.msg[data-status=streaming]', transcript)) scheduleRender(li);
  changed();
  sendPendingFirst();
}

function connect() {
  clearTimeout(conn.retryTimer);
  clearInterval(conn.countdown);
  if (state.finalClose || conn.socket) return;
  let socket;
  try {
    socket = new WebSocket(socketUrl());
  } catch (e) {
    scheduleReconnect();
    return;
  }
  conn.socket = socket;
  socket.addEventListener('open', () => { if (conn.socket === socket) onOpen(); });
  socket.addEventListener('message', (event) => {
    if (conn.socket !== socket) return;
    let frame;
    try {
      frame = JSON.parse(event.data);
    } catch (e) {
      return;
    }
    const handler = frame && HANDLERS[frame.type];
    if (handler) handler(frame);
    if (frame) runHooks(frame.type, frame);
  });
  socket.addEventListener('close', (event) => {
    if (conn.socket !== socket) return;
    conn.socket = null;
    state.connected = false;
    if (!conn.unloading) onClosed(event.code);
  });
}

function onClosed(code) {
  if (state.unacked !== null) {
    state.maybeSent = state.unacked;
    state.unacked = null;
  }
  state.stopping = false;
  if (code === 4401) return giveUp('You are signed out. Log in again to keep chatting.', 'login');
  if (code === 4404) return giveUp('This chat no longer exists.', 'home');
  if (code === 4403) return giveUp('The server refused this page’s connection.', null);
  for (const li of $all('li.msg[data-status=streaming]', transcript)) scheduleRender(li);
  changed();
  if (conn.retries >= 1) {
    // Refusals before the handshake completes all look like 1006 to a
    // browser: ask the page itself whether we are logged out or it is gone.
    probe().then((verdict) => {
      if (verdict === 'login') giveUp('You are signed out. Log in again to keep chatting.', 'login');
      else if (verdict === 'gone') giveUp('This chat no longer exists.', 'home');
      else scheduleReconnect();
    });
    return undefined;
  }
  return scheduleReconnect();
}

function probe() {
  return fetch(page.apiUrl + '?limit=1', { credentials: 'same-origin', redirect: 'manual', headers: { Accept: 'application/json' } })
    .then((response) => {
      if (response.type === 'opaqueredirect' || response.status === 302) return 'login';
      if (response.status === 404) return 'gone';
      return 'retry';
    })
    .catch(() => 'retry');
}

function giveUp(message, action) {
  state.finalClose = true;
  if (state.maybeSent !== null) refill(state.maybeSent);
  state.maybeSent = null;
  hideBanner();
  setBanner(message, false);
  if (action) {
    const link = el('a', null, action === 'login' ? 'Log in' : 'Start a new chat');
    link.href = action === 'login' ? '/accounts/login/?next=' + encodeURIComponent(window.location.pathname) : '/';
    bannerText.append(document.createTextNode(' '), link);
  }
  changed();
}

function scheduleReconnect() {
  if (state.finalClose) return;
  // 1, 2, 4, 8, 15 s (± a little, so many tabs do not return at once).
  const delay = Math.min(15000, 1000 * Math.pow(2, conn.retries)) * (0.8 + Math.random() * 0.4);
  conn.retries += 1;
  conn.retryAt = Date.now() + delay;
  clearInterval(conn.countdown);
  const tick = () => {
    const seconds = Math.max(1, Math.ceil((conn.retryAt - Date.now()) / 1000));
    setBanner('Connection lost. Reconnecting…', true, '(' + seconds + ' s)');
  };
  tick();
  conn.countdown = setInterval(tick, 1000);
  conn.retryTimer = setTimeout(() => {
    clearInterval(conn.countdown);
    setBanner('Reconnecting…', false);
    connect();
  }, delay);
}

function reconnectNow() {
  if (!page.conversationId || state.connected || conn.socket || state.finalClose) return;
  clearTimeout(conn.retryTimer);
  clearInterval(conn.countdown);
  setBanner('Reconnecting…', false);
  connect();
}

export function initSocket() {
  state.send = send;
  if (retryButton) retryButton.addEventListener('click', reconnectNow);
  window.addEventListener('online', reconnectNow);
  document.addEventListener('visibilitychange', () => {
    if (document.visibilityState === 'visible' && state.opened) reconnectNow();
  });
  window.addEventListener('pagehide', () => { conn.unloading = true; });
  window.addEventListener('pageshow', (event) => {
    conn.unloading = false;
    if (event.persisted) reconnectNow();
  });
  if (page.conversationId) connect();
  return status;
}
