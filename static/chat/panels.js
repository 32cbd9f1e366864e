/* The settings drawer, the ⋯ menus, the rename dialog, Delete, dismissable alerts.
 *
 * A full-screen panel holds focus (everything behind it is inert); a menu
 * answers the arrow keys, and closing any of them returns focus to the
 * control that opened it.
 */
import { $, $all, csrfToken, el, holdFocus, isNarrow } from './dom.js';
import { page } from './state.js';

const settingsPanel = $('#settings-panel');
const settingsToggle = $('#settings-toggle');

export function openSettings() {
  if (!settingsPanel) return;
  settingsPanel.classList.add('open');
  settingsToggle.setAttribute('aria-expanded', 'true');
  holdFocus(settingsPanel);
  const first = $('textarea:not([readonly]), input:not([type=range])', settingsPanel);
  (first || settingsPanel).focus();
}

export function closeSettings(returnFocus) {
  if (!settingsPanel || !settingsPanel.classList.contains('open')) return false;
  settingsPanel.classList.remove('open');
  settingsToggle.setAttribute('aria-expanded', 'false');
  holdFocus(null);
  if (returnFocus) settingsToggle.focus();
  return true;
}

// ---- menus (<details class="menu">) ----

function menuItems(menu) { return $all('.menu-list a, .menu-list button', menu); }

export function closeMenus(returnFocus) {
  let closed = false;
  for (const menu of $all('details.menu[open]')) {
    menu.removeAttribute('open');
    if (returnFocus) $('summary', menu).focus();
    closed = true;
  }
  return closed;
}

function onMenuKey(event) {
  const menu = event.target.closest('details.menu');
  if (!menu) return;
  const items = menuItems(menu);
  const index = items.indexOf(document.activeElement);
  const keys = { ArrowDown: index + 1, ArrowUp: index - 1, Home: 0, End: items.length - 1 };
  if (!(event.key in keys)) return;
  event.preventDefault();
  if (!menu.open) menu.open = true;
  const next = index === -1 && event.key === 'ArrowUp' ? items.length - 1 : keys[event.key];
  items[(next + items.length) % items.length].focus();
}

// ---- dialogs ----

const renameDialog = $('#rename-dialog');
let dialogOpener = null;

/** Where focus goes back to: a button inside a closed menu returns it to the menu's button. */
function returnTarget(button) {
  const menu = button.closest('details.menu');
  return menu ? $('summary', menu) : button;
}

function openDialog(dialog, opener) {
  dialogOpener = returnTarget(opener);
  closeMenus(false);
  dialog.showModal();
}

function onDialogButtons(event) {
  const rename = event.target.closest('[data-rename-url]');
  if (rename && renameDialog) {
    $('form', renameDialog).action = rename.getAttribute('data-rename-url');
    const field = $('input[name=title]', renameDialog);
    field.value = rename.getAttribute('data-title') || '';
    openDialog(renameDialog, rename);
    field.focus();
    field.select();
    return;
  }
  const del = event.target.closest('[data-delete-url]');
  if (del) deleteChat(del.getAttribute('data-delete-url'));
}

/** Delete at once, with no dialog: the next page says so and offers Undo (conversations.views.delete).
 * Deleting another chat than the open one stays on this page. */
function deleteChat(url) {
  const form = el('form');
  form.method = 'post';
  form.action = url;
  const fields = { csrfmiddlewaretoken: csrfToken() };
  if (!page.conversationId || !url.includes(page.conversationId)) fields.next = location.pathname + location.search;
  for (const [name, value] of Object.entries(fields)) {
    const input = el('input');
    input.type = 'hidden';
    input.name = name;
    input.value = value;
    form.append(input);
  }
  document.body.append(form);
  form.submit();
}

/** Flash messages and inline errors share one look: text plus a dismiss button. */
function onDismiss(event) {
  const dismiss = event.target.closest('[data-dismiss]');
  if (!dismiss) return;
  const alert = dismiss.closest('.alert');
  const next = alert && (alert.nextElementSibling || alert.previousElementSibling);
  if (alert) alert.remove();
  const focusTarget = next && $('[data-dismiss]', next);
  (focusTarget || $('#composer-input') || document.body).focus();
}

export function initPanels({ closeSidebar }) {
  if (settingsToggle) {
    settingsToggle.addEventListener('click', () => {
      if (settingsPanel.classList.contains('open')) closeSettings(true);
      else openSettings();
    });
  }
  for (const button of $all('[data-close-settings]')) button.addEventListener('click', () => closeSettings(true));
  window.addEventListener('resize', () => { if (!isNarrow()) closeSidebar(false); });

  document.addEventListener('click', (event) => {
    for (const menu of $all('details.menu[open]')) {
      if (!menu.contains(event.target)) menu.removeAttribute('open');
    }
  });
  document.addEventListener('keydown', onMenuKey);
  // Escape closes the innermost open thing (dialogs close themselves).
  document.addEventListener('keydown', (event) => {
    if (event.key !== 'Escape' || event.defaultPrevented) return;
    if (document.querySelector('dialog[open]')) return;
    if (closeMenus(true) || closeSettings(true) || closeSidebar(true)) event.preventDefault();
  });

  if (renameDialog) {
    renameDialog.addEventListener('close', () => {
      if (dialogOpener && document.contains(dialogOpener)) dialogOpener.focus();
      dialogOpener = null;
    });
    for (const button of $all('[data-close-dialog]', renameDialog)) button.addEventListener('click', () => renameDialog.close());
  }
  document.addEventListener('click', onDialogButtons);
  document.addEventListener('click', onDismiss);
}
