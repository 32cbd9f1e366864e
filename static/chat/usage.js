/* The user's token use today, under the composer: fetched on load and after each reply ends. */
import { $, setText } from './dom.js';
import { onChange, state } from './state.js';

const box = $('#usage-today');
let wasLive = false;

function describe(usage) {
  const used = usage.used.toLocaleString() + ' tokens used today';
  if (!usage.limit) return used;
  return used + ' · ' + usage.left.toLocaleString() + ' of ' + usage.limit.toLocaleString() + ' left (resets 00:00 UTC)';
}

export function refreshUsage() {
  if (!box) return Promise.resolve();
  return fetch(box.getAttribute('data-url'), { credentials: 'same-origin', headers: { Accept: 'application/json' } })
    .then((response) => (response.ok ? response.json() : null))
    .then((usage) => {
      if (!usage) return;
      setText(box, describe(usage));
      box.hidden = false;
      box.classList.toggle('usage-spent', Boolean(usage.limit) && usage.left === 0);
    })
    .catch(() => { /* the figure is a convenience: it comes back with the next reply */ });
}

export function initUsage() {
  if (!box) return;
  refreshUsage();
  onChange(() => {
    const live = Boolean(state.live);
    if (wasLive && !live) refreshUsage();
    wasLive = live;
  });
}
