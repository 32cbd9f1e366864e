/**
 * Copying to the clipboard and telling a screen reader what happened: used by the
 * chat page (messages, code blocks) and the API-keys page, which loads nothing else.
 */

function legacyCopy(text) {
  const active = document.activeElement;
  const area = document.createElement('textarea');
  area.value = text;
  area.setAttribute('readonly', '');
  area.className = 'offscreen';
  document.body.appendChild(area);
  area.select();
  let ok = false;
  try {
    ok = document.execCommand('copy');
  } catch (e) {
    ok = false;
  }
  area.remove();
  if (active && active.focus) active.focus();
  return ok;
}

/** Copy text to the clipboard: the async API where allowed, else execCommand. */
export function copyText(text) {
  if (navigator.clipboard && window.isSecureContext) {
    return navigator.clipboard.writeText(text).then(() => true, () => legacyCopy(text));
  }
  return Promise.resolve(legacyCopy(text));
}

/** Say `message` in the page's polite live region (#sr-announcer in base.html). */
export function announce(message, regionId = 'sr-announcer') {
  const region = document.getElementById(regionId);
  if (!region) return;
  region.textContent = '';
  // A change after a tick is announced even when the text repeats.
  setTimeout(() => { region.textContent = message; }, 50);
}

/** Show `label` on a button for two seconds ("Copied"), then its own text again. */
export function flashButton(button, label) {
  const original = button.getAttribute('data-label') || button.textContent;
  button.setAttribute('data-label', original);
  button.textContent = label;
  clearTimeout(button._restore);
  button._restore = setTimeout(() => { button.textContent = original; }, 2000);
}
