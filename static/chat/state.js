/* What the chat modules share about the page and the connection. */

const root = document.getElementById('chat');

export const page = {
  root,
  conversationId: root ? root.getAttribute('data-conversation-id') || '' : '',
  apiUrl: root ? root.getAttribute('data-api-url') || '' : '',
  maxChars: root ? parseInt(root.getAttribute('data-max-chars'), 10) || 16000 : 16000,
  maxSystemChars: root ? parseInt(root.getAttribute('data-max-system-chars'), 10) || 8000 : 8000
};

export const state = {
  connected: false,
  opened: false,        // connected at least once
  finalClose: false,    // the server said no for good (logged out, deleted)
  live: null,           // the reply being generated: its <li>
  unacked: null,        // text sent, not yet echoed back as a `message` frame
  maybeSent: null,      // text sent when the socket dropped: settled by the next sync
  stopping: false,
  send: () => false     // set by socket.js: sends one frame, true if it went out
};

/** Listeners for "something changed that the composer and actions show". */
const listeners = [];
export function onChange(listener) { listeners.push(listener); }
export function changed() { for (const listener of listeners) listener(); }
