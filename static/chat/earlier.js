/* The earlier messages of a long transcript. The page shows the newest page of
 * the active path (docs/history.md); older pages load, newest first, when the
 * reader scrolls up to the "Earlier messages" control, or presses it. Each page
 * is `GET /api/conversations/<id>/?before=<oldest shown>&limit=100`.
 */
import { $ } from './dom.js';
import { placeMessage, refreshBranches } from './branches.js';
import { createMessage, renderMessage, setStored } from './transcript.js';
import { page } from './state.js';

const PAGE = 100;
let loading = false;

function oldestShown() {
  const first = $('#transcript li.msg[data-id]');
  return first ? first.getAttribute('data-id') : null;
}

function loadEarlier(control) {
  const before = oldestShown();
  if (loading || !before) return;
  loading = true;
  const scroller = $('#scroller');
  const fromBottom = scroller.scrollHeight - scroller.scrollTop;
  const url = page.apiUrl + '?limit=' + PAGE + '&before=' + encodeURIComponent(before);
  fetch(url, { credentials: 'same-origin', headers: { Accept: 'application/json' } })
    .then((response) => (response.ok ? response.json() : null))
    .then((data) => {
      if (!data || !Array.isArray(data.messages)) return;
      for (const message of data.messages) {
        if (message.role === 'system') continue;
        const li = createMessage(message.role, message.id);
        placeMessage(li, message);
        setStored(li, message);
        if (message.feedback) {
          li.setAttribute('data-rating', String(message.feedback.rating));
          li.setAttribute('data-comment', message.feedback.comment || '');
        }
        renderMessage(li);
      }
      refreshBranches();
      scroller.scrollTop = scroller.scrollHeight - fromBottom;  // the reader stays where they were
      if (!data.earlier) control.remove();
    })
    .catch(() => { /* the control stays: the next scroll or press tries again */ })
    .finally(() => { loading = false; });
}

export function initEarlier() {
  const control = $('[data-earlier]');
  if (!control) return;
  $('button', control).addEventListener('click', () => loadEarlier(control));
  const observer = new IntersectionObserver((entries) => {
    if (entries.some((entry) => entry.isIntersecting)) loadEarlier(control);
  }, { root: $('#scroller') });
  observer.observe(control);
}
