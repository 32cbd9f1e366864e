/* The chat page: sidebar, dialogs, settings, composer, transcript and the
 * WebSocket (frames in docs/protocol.md).
 *
 * Message text only ever reaches the DOM through ChatMarkdown.render, which
 * builds nodes and sets textContent; nothing here uses innerHTML.
 */
(function () {
  'use strict';

  var md = window.ChatMarkdown;
  var PENDING_KEY = 'chatsite:first-message';
  var PENDING_MAX_AGE_MS = 5 * 60 * 1000;
  var NEAR_BOTTOM_PX = 96;

  function $(selector, root) { return (root || document).querySelector(selector); }
  function $all(selector, root) { return Array.prototype.slice.call((root || document).querySelectorAll(selector)); }

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = text;
    return node;
  }

  /** Change a node's text only when it differs, so live regions do not repeat themselves. */
  function setText(node, text) {
    if (node && node.textContent !== text) node.textContent = text;
  }

  function svgIcon(id) {
    var template = document.getElementById('icon-' + id);
    return template ? template.content.firstElementChild.cloneNode(true) : document.createTextNode('');
  }

  // ---- panels: sidebar, settings drawer, menus, dialogs ------------------

  var sidebar = $('#sidebar');
  var backdrop = $('#backdrop');
  var menuToggle = $('#menu-toggle');
  var settingsPanel = $('#settings-panel');
  var settingsToggle = $('#settings-toggle');

  function isNarrow() { return window.matchMedia('(max-width: 820px)').matches; }

  function openSidebar() {
    if (!sidebar) return;
    sidebar.classList.add('open');
    backdrop.classList.add('open');
    menuToggle.setAttribute('aria-expanded', 'true');
    var target = $('.conv.current a', sidebar) || $('a, button', sidebar);
    if (target) target.focus();
  }

  function closeSidebar(returnFocus) {
    if (!sidebar || !sidebar.classList.contains('open')) return false;
    sidebar.classList.remove('open');
    backdrop.classList.remove('open');
    menuToggle.setAttribute('aria-expanded', 'false');
    if (returnFocus) menuToggle.focus();
    return true;
  }

  function openSettings() {
    if (!settingsPanel) return;
    settingsPanel.classList.add('open');
    settingsToggle.setAttribute('aria-expanded', 'true');
    var first = $('textarea:not([readonly]), input:not([type=range])', settingsPanel);
    (first || settingsPanel).focus();
  }

  function closeSettings(returnFocus) {
    if (!settingsPanel || !settingsPanel.classList.contains('open')) return false;
    settingsPanel.classList.remove('open');
    settingsToggle.setAttribute('aria-expanded', 'false');
    if (returnFocus) settingsToggle.focus();
    return true;
  }

  function closeMenus(returnFocus) {
    var closed = false;
    $all('details.menu[open]').forEach(function (menu) {
      menu.removeAttribute('open');
      if (returnFocus) $('summary', menu).focus();
      closed = true;
    });
    return closed;
  }

  if (menuToggle) {
    menuToggle.addEventListener('click', function () {
      if (sidebar.classList.contains('open')) closeSidebar(true);
      else openSidebar();
    });
  }
  if (backdrop) backdrop.addEventListener('click', function () { closeSidebar(true); });
  $all('[data-close-sidebar]').forEach(function (button) {
    button.addEventListener('click', function () { closeSidebar(true); });
  });
  window.addEventListener('resize', function () { if (!isNarrow()) closeSidebar(false); });

  if (settingsToggle) {
    settingsToggle.addEventListener('click', function () {
      if (settingsPanel.classList.contains('open')) closeSettings(true);
      else openSettings();
    });
  }
  $all('[data-close-settings]').forEach(function (button) {
    button.addEventListener('click', function () { closeSettings(true); });
  });

  document.addEventListener('click', function (event) {
    $all('details.menu[open]').forEach(function (menu) {
      if (!menu.contains(event.target)) menu.removeAttribute('open');
    });
  });

  // Escape closes the innermost open thing (dialogs close themselves).
  document.addEventListener('keydown', function (event) {
    if (event.key !== 'Escape' || event.defaultPrevented) return;
    if (document.querySelector('dialog[open]')) return;
    if (closeMenus(true) || closeSettings(true) || closeSidebar(true)) event.preventDefault();
  });

  // Rename and delete: one dialog each, filled in from the button pressed.
  var renameDialog = $('#rename-dialog');
  var deleteDialog = $('#delete-dialog');
  var dialogOpener = null;

  function openDialog(dialog, opener) {
    closeMenus(false);
    dialogOpener = opener;
    if (typeof dialog.showModal === 'function') dialog.showModal();
    else dialog.setAttribute('open', '');
  }

  [renameDialog, deleteDialog].forEach(function (dialog) {
    if (!dialog) return;
    dialog.addEventListener('close', function () {
      if (dialogOpener && document.contains(dialogOpener)) dialogOpener.focus();
      dialogOpener = null;
    });
    $all('[data-close-dialog]', dialog).forEach(function (button) {
      button.addEventListener('click', function () { dialog.close(); });
    });
  });

  document.addEventListener('click', function (event) {
    var rename = event.target.closest('[data-rename-url]');
    if (rename && renameDialog) {
      $('form', renameDialog).action = rename.getAttribute('data-rename-url');
      var field = $('input[name=title]', renameDialog);
      field.value = rename.getAttribute('data-title') || '';
      openDialog(renameDialog, rename);
      field.focus();
      field.select();
      return;
    }
    var del = event.target.closest('[data-delete-url]');
    if (del && deleteDialog) {
      $('form', deleteDialog).action = del.getAttribute('data-delete-url');
      $('[data-delete-title]', deleteDialog).textContent = del.getAttribute('data-title') || 'this chat';
      openDialog(deleteDialog, del);
      $('[data-close-dialog]', deleteDialog).focus();
    }
  });

  // Flash messages and inline errors share one look: text plus a dismiss button.
  document.addEventListener('click', function (event) {
    var dismiss = event.target.closest('[data-dismiss]');
    if (!dismiss) return;
    var alert = dismiss.closest('.alert');
    var next = alert && (alert.nextElementSibling || alert.previousElementSibling);
    if (alert) alert.remove();
    var focusTarget = next && $('[data-dismiss]', next);
    (focusTarget || $('#composer-input') || document.body).focus();
  });

  // ---- the chat ----------------------------------------------------------

  var root = $('#chat');
  if (!root) return;

  var conversationId = root.getAttribute('data-conversation-id') || '';
  var maxChars = parseInt(root.getAttribute('data-max-chars'), 10) || 16000;
  var apiUrl = root.getAttribute('data-api-url') || '';
  var titled = root.getAttribute('data-titled') === '1';
  var transcript = $('#transcript');
  var scroller = $('#scroller');
  var form = $('#composer');
  var input = $('#composer-input');
  var sendButton = $('#send-button');
  var sendLabel = $('.send-label', sendButton);
  var hint = $('#composer-status');
  var charCount = $('#char-count');
  var errors = $('#errors');
  var banner = $('#connection-banner');
  var bannerText = $('.banner-text', banner);
  var bannerCount = $('.banner-count', banner);
  var retryButton = $('#retry-now');
  var jump = $('#jump');
  var settingsForm = $('#settings-form');
  var messageTemplate = $('#message-template');

  var state = {
    socket: null,
    connected: false,
    opened: false,        // connected at least once
    retries: 0,
    retryAt: 0,
    retryTimer: null,
    countdown: null,
    finalClose: false,    // the server said no for good (logged out, deleted)
    unloading: false,
    live: null,           // the reply being generated: its <li>
    unacked: null,        // text sent, not yet echoed back as a `message` frame
    maybeSent: null,      // text sent when the socket dropped: settled by reconcile()
    stopping: false
  };

  // -- settings --

  var PARAMS = ['temperature', 'top_p', 'max_new_tokens', 'repetition_penalty'];

  function paramInput(name) { return settingsForm ? $('[data-param="' + name + '"]', settingsForm) : null; }

  function syncPair(number) {
    var range = $('input[type=range][data-for="' + number.id + '"]');
    if (range && number.value !== '' && number.checkValidity()) range.value = number.value;
  }

  if (settingsForm) {
    $all('input[type=range][data-for]', settingsForm).forEach(function (range) {
      var number = document.getElementById(range.getAttribute('data-for'));
      range.addEventListener('input', function () { number.value = range.value; });
      number.addEventListener('input', function () { syncPair(number); });
    });
    settingsForm.addEventListener('submit', function (event) {
      event.preventDefault();
      if (settingsForm.reportValidity()) closeSettings(true);
    });
    var reset = $('#settings-reset');
    if (reset) {
      reset.addEventListener('click', function () {
        PARAMS.forEach(function (name) {
          var field = paramInput(name);
          if (field) {
            field.value = field.getAttribute('data-default');
            syncPair(field);
          }
        });
      });
    }
  }

  /** The settings as `params`, or null (and the panel opened on the bad field). */
  function readParams() {
    var params = {};
    for (var i = 0; i < PARAMS.length; i++) {
      var field = paramInput(PARAMS[i]);
      if (!field) continue;
      if (!field.checkValidity() || field.value === '') {
        openSettings();
        setTimeout(function () { field.reportValidity(); field.focus(); }, 60);
        return null;
      }
      params[PARAMS[i]] = PARAMS[i] === 'max_new_tokens' ? parseInt(field.value, 10) : parseFloat(field.value);
    }
    return params;
  }

  // -- transcript --

  function messageEl(id) {
    if (id === undefined || id === null || !transcript) return null;
    return transcript.querySelector('li.msg[data-id="' + CSS.escape(String(id)) + '"]');
  }

  function rawText(li) {
    if (li._raw === undefined) li._raw = $('.md', li).textContent;
    return li._raw;
  }

  function nearBottom() {
    return scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < NEAR_BOTTOM_PX;
  }

  function scrollToBottom() { scroller.scrollTop = scroller.scrollHeight; }

  function hideEmptyStates() {
    $all('[data-empty-state]').forEach(function (node) { node.remove(); });
  }

  /** A new message bubble (from the <template>), placed in id order. */
  function createMessage(role, id) {
    hideEmptyStates();
    var li = messageTemplate.content.firstElementChild.cloneNode(true);
    li.classList.add('msg-' + role);
    li.setAttribute('data-role', role);
    li.setAttribute('data-id', String(id));
    $('.msg-author', li).textContent = role === 'user' ? 'You said:' : 'Assistant said:';
    li._raw = '';
    var before = null;
    $all('li.msg[data-id]', transcript).some(function (other) {
      if (Number(other.getAttribute('data-id')) > Number(id)) { before = other; return true; }
      return false;
    });
    transcript.insertBefore(li, before);
    return li;
  }

  var dirty = new Set();
  var frameRequested = false;

  function scheduleRender(li) {
    dirty.add(li);
    if (frameRequested) return;
    frameRequested = true;
    // One render per animation frame, however many token frames arrived.
    requestAnimationFrame(function () {
      frameRequested = false;
      var stick = nearBottom();
      dirty.forEach(renderMessage);
      dirty.clear();
      if (stick) scrollToBottom();
      updateJump();
    });
  }

  function renderMessage(li) {
    if (!li.isConnected) return;
    var body = $('.md', li);
    var text = rawText(li);
    var streaming = li.getAttribute('data-status') === 'streaming';
    if (streaming && text === '') {
      var typing = el('span', 'typing');
      typing.setAttribute('aria-label', 'The assistant is typing');
      typing.setAttribute('role', 'img');
      typing.appendChild(el('span'));
      typing.appendChild(el('span'));
      typing.appendChild(el('span'));
      body.replaceChildren(typing);
      body.classList.add('md-rendered');
    } else {
      md.render(text, body);
    }
    renderMeta(li);
  }

  function plural(n, word) { return n + ' ' + word + (n === 1 ? '' : 's'); }

  var BADGES = {
    cancelled: 'Stopped',
    interrupted: 'Interrupted',
    error: 'Error'
  };

  function renderMeta(li) {
    var meta = $('.msg-meta', li);
    if (!meta) return;
    var parts = [];
    var status = li.getAttribute('data-status');
    if (li.getAttribute('data-role') === 'assistant') {
      if (status === 'streaming') {
        var queued = li.getAttribute('data-queued');
        var badge = el('span', 'badge badge-live');
        if (queued) {
          // `position` is the 1-based place in the model's queue.
          var ahead = Math.max((parseInt(queued, 10) || 1) - 1, 0);
          badge.textContent = ahead > 0 ? 'Waiting — ' + ahead + ' ahead of you' : 'Waiting — you are next';
        } else if (!state.connected && state.opened) {
          badge.textContent = 'Reconnecting…';
        } else {
          badge.textContent = rawText(li) ? 'Writing…' : 'Thinking…';
        }
        parts.push(badge);
      } else {
        if (BADGES[status]) parts.push(el('span', 'badge badge-' + status, BADGES[status]));
        var tokens = parseInt(li.getAttribute('data-tokens'), 10);
        var tps = parseFloat(li.getAttribute('data-tps'));
        var duration = parseInt(li.getAttribute('data-duration'), 10);
        if (!isNaN(tokens)) parts.push(el('span', null, plural(tokens, 'token')));
        if (!isNaN(tps) && tps > 0) parts.push(el('span', null, tps.toFixed(1) + ' tok/s'));
        if (!isNaN(duration) && duration > 0) parts.push(el('span', null, (duration / 1000).toFixed(1) + ' s'));
        if (li.getAttribute('data-finish') === 'length') parts.push(el('span', null, 'hit the token limit'));
      }
    }
    var nodes = [];
    parts.forEach(function (part, index) {
      if (index > 0) nodes.push(el('span', 'sep', ' · '));
      nodes.push(part);
    });
    meta.replaceChildren.apply(meta, nodes);
  }

  function lastAssistant() {
    var all = $all('li.msg-assistant', transcript);
    return all.length ? all[all.length - 1] : null;
  }

  /** Copy on every finished message; Regenerate on the last reply only. */
  function refreshActions() {
    if (!transcript) return;
    var last = lastAssistant();
    $all('li.msg', transcript).forEach(function (li) {
      var actions = $('.msg-actions', li);
      var streaming = li.getAttribute('data-status') === 'streaming';
      var wanted = [];
      if (!streaming && rawText(li)) wanted.push('copy');
      if (li === last && !streaming && !state.live) wanted.push('regenerate');
      var have = $all('button', actions).map(function (b) { return b.getAttribute('data-action'); });
      if (have.join() === wanted.join()) {
        var regen = $('[data-action=regenerate]', actions);
        if (regen) regen.disabled = !state.connected;
        return;
      }
      var buttons = wanted.map(function (action) {
        var button = el('button', 'link-btn');
        button.type = 'button';
        button.setAttribute('data-action', action);
        button.appendChild(svgIcon(action));
        button.appendChild(el('span', null, action === 'copy' ? 'Copy' : 'Regenerate'));
        button.setAttribute('aria-label', action === 'copy'
          ? (li.getAttribute('data-role') === 'user' ? 'Copy your message' : 'Copy reply')
          : 'Regenerate this reply');
        if (action === 'regenerate') button.disabled = !state.connected;
        return button;
      });
      actions.replaceChildren.apply(actions, buttons);
    });
  }

  function setStatus(li, status, fields) {
    li.setAttribute('data-status', status);
    ['finish', 'tokens', 'tps', 'duration'].forEach(function (key) {
      var value = fields && fields[key];
      if (value === undefined || value === null || value === '') li.removeAttribute('data-' + key);
      else li.setAttribute('data-' + key, String(value));
    });
    li.removeAttribute('data-queued');
    if (status === 'streaming') li.setAttribute('aria-busy', 'true');
    else li.removeAttribute('aria-busy');
  }

  function removeMessage(id) {
    var li = messageEl(id);
    if (li) li.remove();
  }

  // -- composer --

  function autoGrow() {
    input.style.height = 'auto';
    input.style.height = Math.min(input.scrollHeight + 2, Math.round(window.innerHeight * 0.4)) + 'px';
  }

  function updateCount() {
    if (!charCount) return;
    var length = input.value.length;
    if (length > maxChars * 0.8) {
      charCount.textContent = length + ' / ' + maxChars;
      charCount.classList.toggle('over', length > maxChars);
    } else {
      charCount.textContent = '';
    }
  }

  function updateComposer() {
    if (!sendButton) return;
    var onPage = Boolean(conversationId);
    var live = Boolean(state.live);
    sendButton.classList.toggle('is-stop', live);
    sendButton.classList.toggle('btn-primary', !live);
    var icon = live ? 'stop' : 'send';
    if (!sendButton.firstElementChild.classList.contains('icon-' + icon)) {
      sendButton.replaceChild(svgIcon(icon), sendButton.firstElementChild);
    }
    if (live) {
      sendButton.type = 'button';
      setText(sendLabel, state.stopping ? 'Stopping…' : 'Stop');
      sendButton.setAttribute('aria-label', 'Stop generating');
      sendButton.disabled = !state.connected || state.stopping;
      setText(hint, 'A reply is being written. Stop it, or wait to send your next message.');
    } else {
      sendButton.type = 'submit';
      setText(sendLabel, state.unacked !== null ? 'Sending…' : 'Send');
      sendButton.setAttribute('aria-label', 'Send message');
      sendButton.disabled = (onPage && !state.connected) || state.unacked !== null;
      setText(hint, onPage && !state.connected && !state.finalClose
        ? (state.opened ? 'Offline: your message waits here until the connection is back.' : 'Connecting…')
        : '');
    }
    refreshActions();
  }

  function showError(message, code) {
    if (!errors) return;
    var alert = el('div', 'alert');
    alert.setAttribute('data-code', code || '');
    alert.appendChild(svgIcon('alert'));
    alert.appendChild(el('span', 'alert-text', message));
    var close = el('button', 'icon-btn');
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

  function send(frame) {
    if (!state.socket || !state.connected) return false;
    state.socket.send(JSON.stringify(frame));
    return true;
  }

  function submitMessage() {
    var text = input.value;
    if (!text.trim()) return false;
    if (text.length > maxChars) {
      showError('A message can have at most ' + maxChars + ' characters (this one has ' + text.length + ').', 'invalid');
      return false;
    }
    if (state.live || state.unacked !== null) return false;
    var params = readParams();
    if (!params) return false;
    if (!send({ type: 'send', content: text, params: params })) return false;
    clearErrors();
    state.unacked = text;
    input.value = '';
    autoGrow();
    updateCount();
    updateComposer();
    return true;
  }

  function restoreUnacked() {
    if (state.unacked === null) return;
    if (!input.value.trim()) {
      input.value = state.unacked;
      autoGrow();
      updateCount();
    }
    state.unacked = null;
  }

  function stopReply() {
    if (!state.live || state.stopping) return;
    if (send({ type: 'stop' })) {
      state.stopping = true;
      updateComposer();
    }
  }

  function regenerate() {
    if (state.live) return;
    var params = readParams();
    if (!params) return;
    if (send({ type: 'regenerate', params: params })) clearErrors();
  }

  if (form) {
    input.addEventListener('input', function () { autoGrow(); updateCount(); });
    input.addEventListener('keydown', function (event) {
      if (event.key === 'Enter' && !event.shiftKey && !event.isComposing && event.keyCode !== 229) {
        event.preventDefault();
        if (typeof form.requestSubmit === 'function') form.requestSubmit();
        else form.dispatchEvent(new Event('submit', { cancelable: true }));
      }
    });
    sendButton.addEventListener('click', function (event) {
      if (state.live) {
        event.preventDefault();
        stopReply();
      }
    });
    form.addEventListener('submit', function (event) {
      if (!conversationId) {
        // A new chat: the form posts the settings to /c/new/, which redirects
        // to the conversation; its page sends the message once its socket is up.
        if (form.getAttribute('data-submitting') || !input.value.trim()) { event.preventDefault(); return; }
        if (input.value.length > maxChars) { event.preventDefault(); submitMessage(); return; }
        if (settingsForm && !readParams()) { event.preventDefault(); return; }
        try {
          sessionStorage.setItem(PENDING_KEY, JSON.stringify({ content: input.value, at: Date.now() }));
        } catch (e) { /* the chat is still created; the text just is not carried over */ }
        form.setAttribute('data-submitting', '1'); // one chat per Enter, however impatient
        sendButton.disabled = true;
        sendLabel.textContent = 'Starting…';
        return;
      }
      event.preventDefault();
      submitMessage();
    });
    autoGrow();
    updateCount();
  }

  // Suggestions on the welcome screen fill the composer.
  $all('[data-suggestion]').forEach(function (button) {
    button.addEventListener('click', function () {
      input.value = button.getAttribute('data-suggestion');
      autoGrow();
      updateCount();
      updateComposer();
      input.focus();
    });
  });

  if (transcript) {
    transcript.addEventListener('click', function (event) {
      var button = event.target.closest('button[data-action]');
      if (!button) return;
      var li = button.closest('li.msg');
      if (button.getAttribute('data-action') === 'copy') {
        md.copyText(rawText(li)).then(function (ok) {
          var label = $('span', button);
          label.textContent = ok ? 'Copied' : 'Copy failed';
          md.announce(ok ? 'Copied to the clipboard' : 'Could not copy');
          setTimeout(function () { label.textContent = 'Copy'; }, 2000);
        });
      } else if (button.getAttribute('data-action') === 'regenerate') {
        regenerate();
      }
    });
  }

  function updateJump() {
    if (!jump) return;
    jump.hidden = nearBottom() || !transcript || !transcript.children.length;
  }
  if (scroller) scroller.addEventListener('scroll', updateJump, { passive: true });
  if (jump) {
    $('button', jump).addEventListener('click', function () {
      scrollToBottom();
      input.focus();
    });
  }

  // -- the first message of a new chat --

  function takePending() {
    var raw = null;
    try {
      raw = sessionStorage.getItem(PENDING_KEY);
      sessionStorage.removeItem(PENDING_KEY);
    } catch (e) {
      return null;
    }
    if (!raw) return null;
    try {
      var pending = JSON.parse(raw);
      if (typeof pending.content === 'string' && Date.now() - pending.at < PENDING_MAX_AGE_MS) return pending.content;
    } catch (e) { /* a damaged entry is dropped */ }
    return null;
  }

  var pendingFirst = null;
  if (!conversationId && form) {
    // Back on the welcome page after /c/new/ refused the settings: keep the text.
    var back = takePending();
    if (back && !input.value) {
      input.value = back;
      autoGrow();
      updateCount();
    }
  } else if (conversationId && transcript && !$('li.msg', transcript)) {
    pendingFirst = takePending();
    if (pendingFirst) {
      hideEmptyStates();
      input.value = pendingFirst;
      autoGrow();
    }
  }

  // -- server frames --

  function noteTitle(text) {
    if (titled) return;
    titled = true;
    var line = text.split(/\s+/).filter(Boolean).join(' ');
    var title = line;
    if (line.length > 60) {
      var cut = line.slice(0, 60);
      var space = cut.lastIndexOf(' ');
      title = (space > 0 ? cut.slice(0, space) : cut).replace(/[,.;:]+$/, '') + '…';
    }
    var heading = $('#chat-title');
    if (heading) heading.textContent = title;
    document.title = title + ' · Chatsite';
    var current = $('.conv.current');
    if (current) {
      $('a', current).textContent = title;
      $('a', current).title = title;
    }
    // Rename/delete buttons for this chat, in the sidebar and in the ⋯ menu.
    $all('[data-rename-url], [data-delete-url]').forEach(function (button) {
      var url = button.getAttribute('data-rename-url') || button.getAttribute('data-delete-url');
      if (url.indexOf(conversationId) === -1) return;
      button.setAttribute('data-title', title);
      if (button.hasAttribute('aria-label')) {
        button.setAttribute('aria-label', (button.hasAttribute('data-rename-url') ? 'Rename ' : 'Delete ') + title);
      }
    });
  }

  function moveCurrentToTop() {
    var current = $('.conv.current');
    if (current && current.parentNode.firstElementChild !== current) {
      current.parentNode.insertBefore(current, current.parentNode.firstElementChild);
    }
  }

  function onMessage(message) {
    if (!message || message.id === undefined) return;
    var li = messageEl(message.id);
    if (!li) li = createMessage(message.role, message.id);
    li._raw = message.content || '';
    setStatus(li, message.status || 'complete', {});
    scheduleRender(li);
    if (message.role === 'user') {
      if (state.unacked !== null && message.content === state.unacked) state.unacked = null;
      noteTitle(message.content || '');
      moveCurrentToTop();
      // One's own message goes to the bottom even when scrolled up.
      requestAnimationFrame(scrollToBottom);
    }
    updateComposer();
  }

  function onStart(frame) {
    if (frame.replaces) removeMessage(frame.replaces);
    var li = messageEl(frame.message_id) || createMessage('assistant', frame.message_id);
    li._raw = typeof frame.content === 'string' ? frame.content : '';
    setStatus(li, 'streaming', {});
    state.live = li;
    state.stopping = false;
    scheduleRender(li);
    updateComposer();
  }

  function onQueued(frame) {
    var li = messageEl(frame.message_id);
    if (!li) return;
    li.setAttribute('data-queued', String(frame.position));
    scheduleRender(li);
  }

  function onToken(frame) {
    var li = messageEl(frame.message_id);
    if (!li) {
      // A token for a reply we never saw start (should not happen): show it anyway.
      li = createMessage('assistant', frame.message_id);
      setStatus(li, 'streaming', {});
      state.live = li;
      updateComposer();
    }
    li._raw = rawText(li) + (frame.text || '');
    li.removeAttribute('data-queued');
    scheduleRender(li);
  }

  function onEnd(frame) {
    var li = messageEl(frame.message_id);
    if (li) {
      var usage = frame.usage || {};
      var timing = frame.timing || {};
      var status = frame.status || ({ stop: 'complete', length: 'complete' }[frame.finish_reason]) || frame.finish_reason || 'complete';
      setStatus(li, status, {
        finish: frame.finish_reason,
        tokens: usage.completion_tokens,
        tps: timing.tokens_per_s,
        duration: timing.duration_ms
      });
      scheduleRender(li);
      if (status !== 'complete') md.announce('Reply ' + (BADGES[status] || status).toLowerCase());
    }
    if (!li || state.live === li) {
      state.live = null;
      state.stopping = false;
    }
    updateComposer();
  }

  function onErrorFrame(frame) {
    showError(frame.message || 'Something went wrong.', frame.code);
    restoreUnacked();
    if (state.stopping && frame.code === 'invalid') state.stopping = false;
    updateComposer();
  }

  function handleFrame(frame) {
    switch (frame && frame.type) {
      case 'message': onMessage(frame.message); break;
      case 'start': onStart(frame); break;
      case 'queued': onQueued(frame); break;
      case 'token': onToken(frame); break;
      case 'end': onEnd(frame); break;
      case 'error': onErrorFrame(frame); break;
      default: break;
    }
  }

  /** After (re)connecting: bring the page up to date with the stored
   * transcript, for whatever happened while no socket was open. A reply
   * still being generated is left to the socket's own `start` frame. */
  function reconcile() {
    if (!apiUrl) return;
    fetch(apiUrl, { credentials: 'same-origin', headers: { Accept: 'application/json' } })
      .then(function (response) { return response.ok ? response.json() : null; })
      .then(function (data) {
        if (!data || !Array.isArray(data.messages)) return;
        var known = {};
        var maxId = 0;
        data.messages.forEach(function (message) {
          if (message.role === 'system') return;
          known[String(message.id)] = true;
          maxId = Math.max(maxId, Number(message.id));
          var li = messageEl(message.id);
          if (message.status === 'streaming') return;
          if (!li) li = createMessage(message.role, message.id);
          else if (li.getAttribute('data-status') !== 'streaming' && li._raw !== undefined &&
                   rawText(li) === (message.content || '')) return;
          li._raw = message.content || '';
          setStatus(li, message.status, {
            finish: message.finish_reason,
            tokens: message.completion_tokens,
            tps: message.tokens_per_s,
            duration: message.duration_ms
          });
          if (state.live === li) { state.live = null; state.stopping = false; }
          scheduleRender(li);
        });
        // Replies replaced (regenerated) elsewhere while we were away.
        $all('li.msg[data-id]', transcript).forEach(function (li) {
          var id = Number(li.getAttribute('data-id'));
          if (!known[String(id)] && id < maxId && li !== state.live) li.remove();
        });
        if (state.maybeSent !== null) {
          // Sent just before the connection dropped: stored or lost?
          var users = data.messages.filter(function (m) { return m.role === 'user'; });
          var lastUser = users[users.length - 1];
          if (!(lastUser && lastUser.content === state.maybeSent) && !input.value.trim()) {
            input.value = state.maybeSent;
            autoGrow();
            updateCount();
          }
          state.maybeSent = null;
        }
        updateComposer();
      })
      .catch(function () { /* the socket's frames still work; try again on the next connect */ });
  }

  // -- the socket --

  /** The connection banner. `count` (the seconds left) is shown but not
   * announced, so a screen reader hears the message once, not every second. */
  function setBanner(text, showRetry, count) {
    if (!banner) return;
    setText(bannerText, text);
    setText(bannerCount, count || '');
    retryButton.hidden = !showRetry;
    banner.classList.toggle('final', state.finalClose);
    banner.hidden = false;
  }

  function hideBanner() {
    if (banner) banner.hidden = true;
    clearInterval(state.countdown);
  }

  function socketUrl() {
    var scheme = window.location.protocol === 'https:' ? 'wss:' : 'ws:';
    return scheme + '//' + window.location.host + '/ws/chat/' + encodeURIComponent(conversationId) + '/';
  }

  function connect() {
    clearTimeout(state.retryTimer);
    clearInterval(state.countdown);
    if (state.finalClose || state.socket) return;
    var socket;
    try {
      socket = new WebSocket(socketUrl());
    } catch (e) {
      scheduleReconnect();
      return;
    }
    state.socket = socket;
    socket.addEventListener('open', function () {
      if (state.socket !== socket) return;
      var reconnected = state.opened;
      state.connected = true;
      state.opened = true;
      state.retries = 0;
      hideBanner();
      if (reconnected) md.announce('Connection restored');
      reconcile();
      $all('li.msg[data-status=streaming]', transcript).forEach(scheduleRender);
      updateComposer();
      if (pendingFirst !== null) {
        if (input.value === pendingFirst) submitMessage();
        pendingFirst = null;
      }
    });
    socket.addEventListener('message', function (event) {
      if (state.socket !== socket) return;
      var frame;
      try {
        frame = JSON.parse(event.data);
      } catch (e) {
        return;
      }
      handleFrame(frame);
    });
    socket.addEventListener('close', function (event) {
      if (state.socket !== socket) return;
      state.socket = null;
      state.connected = false;
      if (state.unloading) return;
      onClosed(event.code);
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
    $all('li.msg[data-status=streaming]', transcript).forEach(scheduleRender);
    updateComposer();
    if (state.retries >= 1) {
      // Refusals before the handshake completes all look like 1006 to a
      // browser: ask the page itself whether we are logged out or it is gone.
      probe().then(function (verdict) {
        if (verdict === 'login') giveUp('You are signed out. Log in again to keep chatting.', 'login');
        else if (verdict === 'gone') giveUp('This chat no longer exists.', 'home');
        else scheduleReconnect();
      });
      return;
    }
    scheduleReconnect();
  }

  function probe() {
    return fetch(apiUrl, { credentials: 'same-origin', redirect: 'manual', headers: { Accept: 'application/json' } })
      .then(function (response) {
        if (response.type === 'opaqueredirect' || response.status === 302) return 'login';
        if (response.status === 404) return 'gone';
        return 'retry';
      })
      .catch(function () { return 'retry'; });
  }

  function giveUp(message, action) {
    state.finalClose = true;
    if (state.maybeSent !== null && !input.value.trim()) input.value = state.maybeSent;
    state.maybeSent = null;
    hideBanner();
    setBanner(message, false);
    if (action) {
      var link = el('a', null, action === 'login' ? 'Log in' : 'Start a new chat');
      link.href = action === 'login' ? '/accounts/login/?next=' + encodeURIComponent(window.location.pathname) : '/';
      bannerText.appendChild(document.createTextNode(' '));
      bannerText.appendChild(link);
    }
    updateComposer();
  }

  function scheduleReconnect() {
    if (state.finalClose) return;
    // 1, 2, 4, 8, 15 s (± a little, so many tabs do not return at once).
    var delay = Math.min(15000, 1000 * Math.pow(2, state.retries)) * (0.8 + Math.random() * 0.4);
    state.retries += 1;
    state.retryAt = Date.now() + delay;
    clearInterval(state.countdown);
    var tick = function () {
      var seconds = Math.max(1, Math.ceil((state.retryAt - Date.now()) / 1000));
      setBanner('Connection lost. Reconnecting…', true, '(' + seconds + ' s)');
    };
    tick();
    state.countdown = setInterval(tick, 1000);
    state.retryTimer = setTimeout(function () {
      clearInterval(state.countdown);
      setBanner('Reconnecting…', false);
      connect();
    }, delay);
  }

  function reconnectNow() {
    if (!conversationId || state.connected || state.socket || state.finalClose) return;
    clearTimeout(state.retryTimer);
    clearInterval(state.countdown);
    setBanner('Reconnecting…', false);
    connect();
  }

  if (retryButton) retryButton.addEventListener('click', reconnectNow);
  window.addEventListener('online', reconnectNow);
  document.addEventListener('visibilitychange', function () {
    if (document.visibilityState === 'visible' && state.opened) reconnectNow();
  });
  window.addEventListener('pagehide', function () { state.unloading = true; });
  window.addEventListener('pageshow', function (event) {
    state.unloading = false;
    if (!event.persisted) return;
    // Back from the browser's page cache: nothing is being submitted any more.
    if (form) form.removeAttribute('data-submitting');
    updateComposer();
    reconnectNow();
  });

  // -- start --

  if (transcript) {
    // The server rendered the text escaped; render it as Markdown now.
    $all('li.msg', transcript).forEach(function (li) {
      rawText(li);
      if (li.getAttribute('data-status') === 'streaming') li.setAttribute('aria-busy', 'true');
      renderMessage(li);
    });
    var streaming = $all('li.msg[data-status=streaming]', transcript);
    if (streaming.length) state.live = streaming[streaming.length - 1];
    scrollToBottom();
    updateJump();
  }
  updateComposer();
  if (conversationId) connect();
  if (input && !isNarrow()) input.focus({ preventScroll: true });
})();
