/* Thumbs up / down, with an optional comment, on every finished assistant reply.
 *
 * The state lives on the message's <li> (data-rating, data-comment: from the
 * server-rendered page, the POST's answer, or another tab's `feedback` frame)
 * and the buttons show it with aria-pressed. Pressing the pressed thumb again
 * clears the rating. Endpoint: POST /api/messages/<id>/feedback/ (docs/protocol.md).
 */
import { $, $all, csrfToken, el, setText } from './dom.js';
import { announce } from './clipboard.js';
import { showError } from './composer.js';
import { onFrame } from './socket.js';
import { messageEl, onRefresh, transcript } from './transcript.js';

const SVG_NS = 'http://www.w3.org/2000/svg';
const THUMBS = {
  1: { label: 'Good reply', path: 'M7 10v12M15 5.88 14 10h5.83a2 2 0 0 1 1.92 2.56l-2.33 8A2 2 0 0 1 17.5 22H4a2 2 0 0 1-2-2v-8a2 2 0 0 1 2-2h2.76a2 2 0 0 0 1.79-1.11L12 2a3.13 3.13 0 0 1 3 3.88Z' },
  '-1': { label: 'Bad reply', path: 'M17 14V2M9 18.12 10 14H4.17a2 2 0 0 1-1.92-2.56l2.33-8A2 2 0 0 1 6.5 2H20a2 2 0 0 1 2 2v8a2 2 0 0 1-2 2h-2.76a2 2 0 0 0-1.79 1.11L12 22a3.13 3.13 0 0 1-3-3.88Z' }
};
const MAX_COMMENT = 2000;

function icon(path) {
  const svg = document.createElementNS(SVG_NS, 'svg');
  for (const [name, value] of Object.entries({
    class: 'icon', viewBox: '0 0 24 24', fill: 'none', stroke: 'currentColor', 'stroke-width': '2',
    'stroke-linecap': 'round', 'stroke-linejoin': 'round', 'aria-hidden': 'true', focusable: 'false'
  })) svg.setAttribute(name, value);
  const line = document.createElementNS(SVG_NS, 'path');
  line.setAttribute('d', path);
  svg.appendChild(line);
  return svg;
}

function rateable(li) {
  return li.getAttribute('data-role') === 'assistant' && li.getAttribute('data-status') !== 'streaming'
    && /^\d+$/.test(li.getAttribute('data-id') || '');
}

function button(className, text) {
  const node = el('button', 'link-btn ' + className, text);
  node.type = 'button';
  return node;
}

/** The thumbs of a reply, added once it has finished (called by transcript.refreshActions). */
function ensureControls(li) {
  const box = $('.msg-feedback', li);
  if (!rateable(li)) {
    if (box) box.remove();
    return;
  }
  if (box) return;
  const group = el('span', 'msg-feedback');
  group.setAttribute('role', 'group');
  group.setAttribute('aria-label', 'Rate this reply');
  for (const rating of ['1', '-1']) {
    const thumb = button('feedback-thumb');
    thumb.setAttribute('data-rating-button', rating);
    thumb.setAttribute('aria-label', THUMBS[rating].label);
    thumb.title = THUMBS[rating].label;
    thumb.appendChild(icon(THUMBS[rating].path));
    group.appendChild(thumb);
  }
  const comment = button('feedback-comment');
  comment.setAttribute('aria-expanded', 'false');
  group.appendChild(comment);
  $('.msg-foot', li).appendChild(group);
  show(li);
}

function show(li) {
  const rating = li.getAttribute('data-rating') || '0';
  for (const thumb of $all('[data-rating-button]', li)) {
    thumb.setAttribute('aria-pressed', String(thumb.getAttribute('data-rating-button') === rating));
  }
  const comment = $('.feedback-comment', li);
  if (!comment) return;
  comment.hidden = rating === '0';
  setText(comment, li.getAttribute('data-comment') ? 'Edit comment' : 'Add a comment');
  if (rating === '0') closeForm(li, false);
}

function apply(li, feedback) {
  if (feedback && feedback.rating) {
    li.setAttribute('data-rating', String(feedback.rating));
    li.setAttribute('data-comment', feedback.comment || '');
  } else {
    li.removeAttribute('data-rating');
    li.removeAttribute('data-comment');
  }
  show(li);
}

async function save(li, rating, comment) {
  const response = await fetch('/api/messages/' + encodeURIComponent(li.getAttribute('data-id')) + '/feedback/', {
    method: 'POST',
    credentials: 'same-origin',
    headers: { 'Content-Type': 'application/json', Accept: 'application/json', 'X-CSRFToken': csrfToken() },
    body: JSON.stringify({ rating: Number(rating), comment })
  });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(data.error || 'Your feedback could not be saved.');
  apply(li, data);
  return data;
}

function rate(li, thumb) {
  const chosen = thumb.getAttribute('data-rating-button');
  const rating = thumb.getAttribute('aria-pressed') === 'true' ? '0' : chosen;
  const comment = rating === '0' ? '' : li.getAttribute('data-comment') || '';
  save(li, rating, comment)
    .then(() => announce(rating === '0' ? 'Rating removed' : 'Rated: ' + THUMBS[rating].label.toLowerCase()))
    .catch((error) => showError(error.message, 'feedback'));
}

function openForm(li, opener) {
  if ($('.feedback-form', li)) return;
  const form = el('form', 'feedback-form');
  const id = 'feedback-text-' + li.getAttribute('data-id');
  const label = el('label', null, 'Comment on this reply (optional)');
  label.htmlFor = id;
  const text = el('textarea');
  text.id = id;
  text.rows = 2;
  text.maxLength = MAX_COMMENT;
  text.value = li.getAttribute('data-comment') || '';
  const submit = el('button', 'btn btn-primary', 'Save');
  submit.type = 'submit';
  const cancel = button('feedback-cancel', 'Cancel');
  const actions = el('div', 'feedback-form-actions');
  actions.append(submit, cancel);
  form.append(label, text, actions);
  $('.msg-foot', li).after(form);
  opener.setAttribute('aria-expanded', 'true');
  text.focus();
}

function closeForm(li, refocus) {
  const form = $('.feedback-form', li);
  if (!form) return;
  form.remove();
  const opener = $('.feedback-comment', li);
  if (opener) {
    opener.setAttribute('aria-expanded', 'false');
    if (refocus) opener.focus();
  }
}

function onClick(event) {
  const target = event.target.closest('button');
  const li = target && target.closest('li.msg');
  if (!li) return;
  if (target.hasAttribute('data-rating-button')) rate(li, target);
  else if (target.classList.contains('feedback-comment')) {
    if ($('.feedback-form', li)) closeForm(li, true);
    else openForm(li, target);
  } else if (target.classList.contains('feedback-cancel')) closeForm(li, true);
}

function onSubmit(event) {
  const form = event.target.closest('.feedback-form');
  if (!form) return;
  event.preventDefault();
  const li = form.closest('li.msg');
  save(li, li.getAttribute('data-rating') || '0', $('textarea', form).value)
    .then(() => { closeForm(li, true); announce('Comment saved'); })
    .catch((error) => showError(error.message, 'feedback'));
}

function onKeydown(event) {
  if (event.key !== 'Escape') return;
  const form = event.target.closest && event.target.closest('.feedback-form');
  if (form) closeForm(form.closest('li.msg'), true);
}

export function initFeedback() {
  if (!transcript) return;
  onRefresh(ensureControls);
  for (const li of $all('li.msg', transcript)) ensureControls(li);
  transcript.addEventListener('click', onClick);
  transcript.addEventListener('submit', onSubmit);
  transcript.addEventListener('keydown', onKeydown);
  // Another tab rated a reply of this conversation.
  onFrame('feedback', (frame) => {
    const li = messageEl(frame.message_id);
    if (li) apply(li, frame.feedback);
  });
}
