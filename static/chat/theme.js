/* Light/dark theme: the system's choice unless the user picked one with the
 * toggle (kept in localStorage). Loaded in <head>, before the body is painted,
 * so a dark page never flashes white. */
(function () {
  'use strict';
  var KEY = 'chatsite:theme';
  var media = window.matchMedia ? window.matchMedia('(prefers-color-scheme: dark)') : null;
  var chosen = null; // this page's choice, for when storage is disabled

  function stored() {
    try {
      var value = window.localStorage.getItem(KEY);
      return value === 'light' || value === 'dark' ? value : chosen;
    } catch (e) {
      return chosen; // storage can be disabled; the toggle still works on this page
    }
  }

  function effective() {
    return stored() || (media && media.matches ? 'dark' : 'light');
  }

  function apply() {
    var theme = effective();
    var html = document.documentElement;
    if (html.getAttribute('data-theme') !== theme) {
      html.classList.add('theme-switching');
      html.setAttribute('data-theme', theme);
      requestAnimationFrame(function () {
        requestAnimationFrame(function () { html.classList.remove('theme-switching'); });
      });
    }
    var buttons = document.querySelectorAll('[data-theme-toggle]');
    for (var i = 0; i < buttons.length; i++) {
      var next = theme === 'dark' ? 'light' : 'dark';
      buttons[i].setAttribute('aria-label', 'Switch to ' + next + ' theme');
      buttons[i].setAttribute('title', 'Switch to ' + next + ' theme');
    }
  }

  function toggle() {
    var next = effective() === 'dark' ? 'light' : 'dark';
    chosen = next;
    try {
      window.localStorage.setItem(KEY, next);
    } catch (e) { /* not persisted, but still applied below */ }
    apply();
  }

  apply();
  if (media) {
    var onChange = function () { if (!stored()) apply(); };
    if (media.addEventListener) media.addEventListener('change', onChange);
    else if (media.addListener) media.addListener(onChange);
  }
  document.addEventListener('DOMContentLoaded', function () {
    apply();
    document.addEventListener('click', function (event) {
      var button = event.target.closest && event.target.closest('[data-theme-toggle]');
      if (button) toggle();
    });
  });
})();
