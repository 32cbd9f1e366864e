/* "Earlier messages summarised": where a chat outgrew its model's context, the last message its
 * summary stands in for carries a disclosure with the summary's text (docs/history.md, "Summaries").
 * The server renders it with the page; the `summary` frame, a sync and a branch switch move it.
 * The text is the model's: it reaches the DOM as text, never as markup. */
import { $all, el } from './dom.js';
import { messageEl } from './transcript.js';

const transcript = document.getElementById('transcript');
let current = null;  // {text, until} of the path shown, or null

function place() {
  for (const node of $all('.summary-note', transcript)) node.remove();
  const li = current && messageEl(current.until);
  if (!li) return;
  const details = el('details', 'summary-note');
  details.append(el('summary', null, 'Earlier messages summarised'));
  details.append(el('p', 'summary-help', 'The model reads this summary in place of the messages up to here:'));
  details.append(el('p', 'summary-text', current.text));
  li.querySelector('.msg-inner').append(details);
}

function show(summary) {
  const valid = summary && typeof summary.text === 'string' && summary.until != null;
  current = valid ? { text: summary.text, until: String(summary.until) } : null;
  place();
}

export function initSummary(onFrame) {
  if (!transcript) return;
  const shown = $all('.summary-note', transcript)[0];
  if (shown) current = { text: shown.querySelector('.summary-text').textContent, until: shown.closest('li').getAttribute('data-id') };
  onFrame('summary', (frame) => show(frame.summary));
  onFrame('synced', (data) => { if ('summary' in data) show(data.summary); });
  onFrame('path', (frame) => { if ('summary' in frame) show(frame.summary); else place(); });
}
