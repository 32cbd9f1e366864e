/* A small Markdown renderer that builds DOM nodes and never parses HTML.
 *
 * Model (and user) text is untrusted: every piece of it reaches the page as a
 * Text node (document.createTextNode / textContent), never through innerHTML,
 * so `<img onerror=...>` in a message is shown as those characters. Elements
 * are created only from a fixed list of tags chosen by this code; the only
 * attribute taken from the text is a link's href, and only after URL() has
 * parsed it as http: or https:.
 *
 * Supported: paragraphs (single newlines kept as line breaks), # headings,
 * **bold**, *italic*, ~~strike~~, `code`, fenced code blocks (``` or ~~~,
 * with a Copy button), bullet and numbered lists (nested by indentation),
 * > quotes, --- rules, pipe tables, [links](https://...) and bare
 * https:// URLs. An unclosed code fence (a reply still streaming) renders as
 * a code block up to the end of the text.
 *
 *   ChatMarkdown.render(text, element)   // replaces element's children
 *   ChatMarkdown.copyText(text)          // Promise<boolean>
 */
(function (global) {
  'use strict';

  var FENCE_OPEN = /^( {0,3})(`{3,}|~{3,})[ \t]*([^`\s]*)[^`]*$/;
  var FENCE_CLOSE = /^ {0,3}(`{3,}|~{3,})[ \t]*$/;
  var HEADING = /^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$/;
  var RULE = /^ {0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*$/;
  var QUOTE = /^ {0,3}> ?(.*)$/;
  var LIST_ITEM = /^( *)([-*+]|\d{1,9}[.)])([ \t]+|$)(.*)$/;
  var TABLE_SEPARATOR = /^[ \t]*\|?[ \t]*:?-+:?[ \t]*(\|[ \t]*:?-+:?[ \t]*)*\|?[ \t]*$/;
  var BLANK = /^[ \t]*$/;
  var ESCAPABLE = /[\\`*_{}\[\]()#+\-.!|~<>]/;
  var URL_START = /^https?:\/\//i;
  var BARE_URL = /^https?:\/\/[^\s<>"'`]+/i;
  var LANG = /^[A-Za-z0-9_+#.-]{1,24}$/;

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = text;
    return node;
  }

  function indentOf(line) {
    var n = 0;
    while (n < line.length && line.charAt(n) === ' ') n++;
    return n;
  }

  /** The href for a link, or null: only absolute http(s) URLs are links. */
  function safeUrl(raw) {
    var candidate = String(raw || '').trim();
    if (!URL_START.test(candidate)) return null;
    try {
      var url = new URL(candidate);
      return url.protocol === 'http:' || url.protocol === 'https:' ? url.href : null;
    } catch (e) {
      return null;
    }
  }

  function link(href, parent, label) {
    var a = el('a');
    a.href = href;
    a.target = '_blank';
    a.rel = 'noopener noreferrer nofollow';
    a.title = href;
    if (typeof label === 'string') renderInline(label, a, true);
    else a.textContent = href;
    parent.appendChild(a);
    return a;
  }

  // ---- blocks ------------------------------------------------------------

  function listMarker(line) {
    var m = LIST_ITEM.exec(line);
    if (!m) return null;
    // "-" alone would be a list, but "---" is a rule and "*emph*" is text.
    if (m[3] === '' && m[4] === '' && !/\d/.test(m[2])) return null;
    return { indent: m[1].length, marker: m[2], ordered: /\d/.test(m[2]), gap: m[3], text: m[4] };
  }

  function startsBlock(line) {
    return FENCE_OPEN.test(line) || HEADING.test(line) || RULE.test(line) ||
      QUOTE.test(line) || listMarker(line) !== null;
  }

  function isTableStart(lines, i) {
    return lines[i].indexOf('|') !== -1 && i + 1 < lines.length &&
      lines[i + 1].indexOf('-') !== -1 && TABLE_SEPARATOR.test(lines[i + 1]) &&
      splitRow(lines[i]).length === splitRow(lines[i + 1]).length;
  }

  /** Render `lines` as blocks into `parent`. With `tight`, paragraphs are
   * not wrapped in <p> (the items of a tight list). */
  function renderBlocks(lines, parent, tight) {
    var i = 0;
    var firstParagraph = true;
    while (i < lines.length) {
      var line = lines[i];
      var m;
      if (BLANK.test(line)) { i++; continue; }

      if ((m = FENCE_OPEN.exec(line))) {
        i = codeBlock(lines, i, m, parent);
        continue;
      }
      if ((m = HEADING.exec(line))) {
        // A message sits under the page's own headings: # becomes <h3>.
        var level = Math.min(m[1].length + 2, 6);
        var heading = el('h' + level);
        renderInline(m[2] || '', heading);
        parent.appendChild(heading);
        i++;
        continue;
      }
      if (RULE.test(line)) {
        parent.appendChild(el('hr'));
        i++;
        continue;
      }
      if (QUOTE.test(line)) {
        var quoted = [];
        while (i < lines.length && (m = QUOTE.exec(lines[i]))) {
          quoted.push(m[1]);
          i++;
        }
        var quote = el('blockquote');
        renderBlocks(quoted, quote, false);
        parent.appendChild(quote);
        continue;
      }
      if (listMarker(line)) {
        i = list(lines, i, parent);
        continue;
      }
      if (isTableStart(lines, i)) {
        i = table(lines, i, parent);
        continue;
      }

      // A paragraph: lines up to a blank line or the start of another block.
      var paragraph = [line.trim()];
      i++;
      while (i < lines.length && !BLANK.test(lines[i]) && !startsBlock(lines[i]) && !isTableStart(lines, i)) {
        paragraph.push(lines[i].trim());
        i++;
      }
      var target = parent;
      if (!tight) {
        target = el('p');
        parent.appendChild(target);
      } else if (!firstParagraph) {
        parent.appendChild(el('br'));
      }
      firstParagraph = false;
      for (var k = 0; k < paragraph.length; k++) {
        if (k > 0) target.appendChild(el('br'));
        renderInline(paragraph[k], target);
      }
    }
  }

  function codeBlock(lines, i, open, parent) {
    var indent = open[1].length;
    var fence = open[2];
    var lang = open[3] || '';
    var body = [];
    var closed = false;
    i++;
    while (i < lines.length) {
      var close = FENCE_CLOSE.exec(lines[i]);
      if (close && close[1].charAt(0) === fence.charAt(0) && close[1].length >= fence.length) {
        closed = true;
        i++;
        break;
      }
      var line = lines[i];
      body.push(indent ? line.slice(Math.min(indent, indentOf(line))) : line);
      i++;
    }
    parent.appendChild(codeBlockNode(body.join('\n'), lang, closed));
    return i;
  }

  function codeBlockNode(code, lang, closed) {
    var wrap = el('div', 'codeblock');
    var head = el('div', 'codeblock-head');
    head.appendChild(el('span', 'codeblock-lang', LANG.test(lang) ? lang : (lang ? 'code' : 'text')));
    var copy = el('button', 'link-btn copy-btn', 'Copy');
    copy.type = 'button';
    copy.setAttribute('aria-label', 'Copy code' + (LANG.test(lang) ? ' (' + lang + ')' : ''));
    head.appendChild(copy);
    var pre = el('pre');
    var codeEl = el('code', LANG.test(lang) ? 'language-' + lang : null, code);
    pre.appendChild(codeEl);
    pre.tabIndex = 0; // wide code scrolls sideways; let keyboards do it too
    wrap.appendChild(head);
    wrap.appendChild(pre);
    if (!closed) wrap.classList.add('codeblock-open');
    return wrap;
  }

  function list(lines, i, parent) {
    var first = listMarker(lines[i]);
    var base = first.indent;
    var ordered = first.ordered;
    var node = el(ordered ? 'ol' : 'ul');
    if (ordered) {
      var start = parseInt(first.marker, 10);
      if (start !== 1 && !isNaN(start)) node.start = start;
    }
    var items = [];
    var current = null;
    var loose = false;
    var sawBlank = false;

    function sibling(item) {
      return item && item.indent <= base + 1 && item.ordered === ordered;
    }

    while (i < lines.length) {
      var line = lines[i];
      var item = listMarker(line);
      if (sibling(item) && !RULE.test(line)) {
        if (sawBlank && current) loose = true;
        current = { lines: [item.text], contentIndent: item.indent + item.marker.length + Math.max(item.gap.length, 1) };
        items.push(current);
        sawBlank = false;
        i++;
        continue;
      }
      if (BLANK.test(line)) {
        // The list goes on after blank lines only if what follows belongs to it.
        var j = i + 1;
        while (j < lines.length && BLANK.test(lines[j])) j++;
        if (j >= lines.length) break;
        var next = listMarker(lines[j]);
        if (sibling(next) || indentOf(lines[j]) > base + 1) {
          sawBlank = true;
          current.lines.push('');
          i++;
          continue;
        }
        break;
      }
      var indent = indentOf(line);
      if (indent > base) {
        if (sawBlank && !listMarker(line.slice(indent))) loose = true;
        current.lines.push(line.slice(Math.min(indent, current.contentIndent)));
        sawBlank = false;
        i++;
        continue;
      }
      // A lazy continuation line of the item's paragraph.
      if (!sawBlank && !startsBlock(line)) {
        current.lines.push(line.trim());
        i++;
        continue;
      }
      break;
    }

    for (var k = 0; k < items.length; k++) {
      var li = el('li');
      renderBlocks(items[k].lines, li, !loose);
      node.appendChild(li);
    }
    parent.appendChild(node);
    return i;
  }

  function splitRow(line) {
    var s = line.trim();
    if (s.charAt(0) === '|') s = s.slice(1);
    if (s.charAt(s.length - 1) === '|' && s.charAt(s.length - 2) !== '\\') s = s.slice(0, -1);
    var cells = [];
    var cell = '';
    for (var i = 0; i < s.length; i++) {
      var c = s.charAt(i);
      if (c === '\\' && s.charAt(i + 1) === '|') { cell += '|'; i++; continue; }
      if (c === '|') { cells.push(cell.trim()); cell = ''; continue; }
      cell += c;
    }
    cells.push(cell.trim());
    return cells;
  }

  function table(lines, i, parent) {
    var header = splitRow(lines[i]);
    var aligns = splitRow(lines[i + 1]).map(function (spec) {
      var left = spec.charAt(0) === ':';
      var right = spec.charAt(spec.length - 1) === ':';
      return left && right ? 'center' : right ? 'right' : left ? 'left' : '';
    });
    var wrap = el('div', 'table-wrap');
    var tableEl = el('table');
    var thead = el('thead');
    var row = el('tr');
    header.forEach(function (text, col) {
      var th = el('th');
      th.scope = 'col';
      if (aligns[col]) th.style.textAlign = aligns[col];
      renderInline(text, th);
      row.appendChild(th);
    });
    thead.appendChild(row);
    tableEl.appendChild(thead);
    var tbody = el('tbody');
    i += 2;
    while (i < lines.length && !BLANK.test(lines[i]) && lines[i].indexOf('|') !== -1) {
      var cells = splitRow(lines[i]);
      var tr = el('tr');
      for (var col = 0; col < header.length; col++) {
        var td = el('td');
        if (aligns[col]) td.style.textAlign = aligns[col];
        renderInline(cells[col] || '', td);
        tr.appendChild(td);
      }
      tbody.appendChild(tr);
      i++;
    }
    tableEl.appendChild(tbody);
    wrap.appendChild(tableEl);
    parent.appendChild(wrap);
    return i;
  }

  // ---- inline ------------------------------------------------------------

  function isSpace(c) { return c === '' || /\s/.test(c); }
  function isWord(c) { return c !== '' && /[A-Za-z0-9]/.test(c); }

  /** Index of the closing `delim` for an opener ending at `from`, or -1. */
  function findClose(text, from, delim) {
    var ch = delim.charAt(0);
    var j = from;
    while (j < text.length) {
      var c = text.charAt(j);
      if (c === '\\') { j += 2; continue; }
      if (c === '`') {
        // Code spans are opaque: skip to their end.
        var n = 1;
        while (text.charAt(j + n) === '`') n++;
        var end = text.indexOf(text.substr(j, n), j + n);
        j = end === -1 ? j + n : end + n;
        continue;
      }
      if (text.substr(j, delim.length) === delim && j > from && !isSpace(text.charAt(j - 1))) {
        // In a run like "***", close with its last delimiter-width characters.
        while (text.charAt(j + delim.length) === ch) j++;
        if (ch === '_' && isWord(text.charAt(j + delim.length))) { j += delim.length; continue; }
        if (delim.length === 1 && text.charAt(j - 1) === ch) { j++; continue; }
        return j;
      }
      j++;
    }
    return -1;
  }

  /** Position after the bracket matching text[i] ('[' or '('), or -1. */
  function matching(text, i, open, close) {
    var depth = 0;
    for (var j = i; j < text.length; j++) {
      var c = text.charAt(j);
      if (c === '\\') { j++; continue; }
      if (c === open) depth++;
      else if (c === close) {
        depth--;
        if (depth === 0) return j;
      }
    }
    return -1;
  }

  function trimUrl(url) {
    // Sentence punctuation after a bare URL is not part of it.
    while (/[.,;:!?'")\]*_]$/.test(url)) {
      var last = url.charAt(url.length - 1);
      if (last === ')' && (url.split('(').length - 1) >= (url.split(')').length - 1)) break;
      url = url.slice(0, -1);
    }
    return url;
  }

  /** Render one line's inline Markdown into `parent`. Inside a link's label
   * (`inLink`), nothing makes another link: links do not nest. */
  function renderInline(text, parent, inLink) {
    var buffer = '';
    function flush() {
      if (buffer) {
        parent.appendChild(document.createTextNode(buffer));
        buffer = '';
      }
    }
    var i = 0;
    while (i < text.length) {
      var c = text.charAt(i);
      var prev = i > 0 ? text.charAt(i - 1) : '';

      if (c === '\\' && ESCAPABLE.test(text.charAt(i + 1))) {
        buffer += text.charAt(i + 1);
        i += 2;
        continue;
      }

      if (c === '`') {
        var n = 1;
        while (text.charAt(i + n) === '`') n++;
        var ticks = text.substr(i, n);
        var end = text.indexOf(ticks, i + n);
        while (end !== -1 && text.charAt(end + n) === '`') {
          var after = end;
          while (text.charAt(after) === '`') after++;
          end = text.indexOf(ticks, after);
        }
        if (end !== -1) {
          flush();
          var code = text.slice(i + n, end);
          if (code.length > 2 && code.charAt(0) === ' ' && code.charAt(code.length - 1) === ' ') code = code.slice(1, -1);
          parent.appendChild(el('code', null, code));
          i = end + n;
          continue;
        }
        buffer += ticks;
        i += n;
        continue;
      }

      if (c === '*' || c === '_' || c === '~') {
        var double = text.charAt(i + 1) === c;
        if (c === '~' && !double) { buffer += c; i++; continue; }
        var delim = double ? c + c : c;
        var inner = text.charAt(i + delim.length);
        var opens = !isSpace(inner) && !(c === '_' && isWord(prev));
        if (opens) {
          var close = findClose(text, i + delim.length, delim);
          if (close !== -1) {
            flush();
            var tag = c === '~' ? 'del' : double ? 'strong' : 'em';
            var node = el(tag);
            renderInline(text.slice(i + delim.length, close), node, inLink);
            parent.appendChild(node);
            i = close + delim.length;
            continue;
          }
        }
        buffer += delim;
        i += delim.length;
        continue;
      }

      if (!inLink && (c === '[' || (c === '!' && text.charAt(i + 1) === '['))) {
        var image = c === '!';
        var openAt = image ? i + 1 : i;
        var labelEnd = matching(text, openAt, '[', ']');
        if (labelEnd !== -1 && text.charAt(labelEnd + 1) === '(') {
          var targetEnd = matching(text, labelEnd + 1, '(', ')');
          if (targetEnd !== -1) {
            var label = text.slice(openAt + 1, labelEnd);
            var dest = text.slice(labelEnd + 2, targetEnd).trim().replace(/^<(.*)>$/, '$1');
            dest = dest.replace(/\s+(".*"|'.*')$/, '');
            var href = safeUrl(dest);
            if (href) {
              flush();
              // Images are shown as links: nothing is fetched on the reader's behalf.
              link(href, parent, image ? (label || href) : label);
              i = targetEnd + 1;
              continue;
            }
            // Not an http(s) link: show the source as typed.
            buffer += text.slice(i, targetEnd + 1);
            i = targetEnd + 1;
            continue;
          }
        }
        buffer += c;
        i++;
        continue;
      }

      if (c === '<' && !inLink) {
        var auto = /^<(https?:\/\/[^\s<>]+)>/i.exec(text.slice(i));
        if (auto && safeUrl(auto[1])) {
          flush();
          link(safeUrl(auto[1]), parent);
          i += auto[0].length;
          continue;
        }
        buffer += c;
        i++;
        continue;
      }

      if ((c === 'h' || c === 'H') && !inLink && !isWord(prev) && prev !== '/') {
        var bare = BARE_URL.exec(text.slice(i, i + 2048));
        if (bare) {
          var url = trimUrl(bare[0]);
          var safe = safeUrl(url);
          if (safe && url.length > 8) {
            flush();
            var a = link(safe, parent);
            a.textContent = url;
            i += url.length;
            continue;
          }
        }
      }

      buffer += c;
      i++;
    }
    flush();
  }

  // ---- public ------------------------------------------------------------

  function render(source, target) {
    var lines = String(source == null ? '' : source).replace(/\r\n?/g, '\n').split('\n');
    var fragment = document.createDocumentFragment();
    renderBlocks(lines, fragment, false);
    target.replaceChildren(fragment);
    target.classList.add('md-rendered');
  }

  function legacyCopy(text) {
    var active = document.activeElement;
    var area = document.createElement('textarea');
    area.value = text;
    area.setAttribute('readonly', '');
    area.style.position = 'fixed';
    area.style.top = '0';
    area.style.left = '0';
    area.style.opacity = '0';
    document.body.appendChild(area);
    area.select();
    var ok = false;
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
  function copyText(text) {
    if (navigator.clipboard && window.isSecureContext) {
      return navigator.clipboard.writeText(text).then(
        function () { return true; },
        function () { return legacyCopy(text); }
      );
    }
    return Promise.resolve(legacyCopy(text));
  }

  function flashButton(button, label) {
    var original = button.getAttribute('data-label') || button.textContent;
    button.setAttribute('data-label', original);
    button.textContent = label;
    clearTimeout(button._restore);
    button._restore = setTimeout(function () { button.textContent = original; }, 2000);
  }

  function announce(message) {
    var region = document.getElementById('sr-announcer');
    if (!region) return;
    region.textContent = '';
    // A change after a tick is announced even when the text repeats.
    setTimeout(function () { region.textContent = message; }, 50);
  }

  // Copy buttons of code blocks, wherever they are rendered (delegated, so a
  // block re-rendered while a reply streams keeps working).
  document.addEventListener('click', function (event) {
    var button = event.target.closest && event.target.closest('.copy-btn');
    if (!button) return;
    var block = button.closest('.codeblock');
    var code = block && block.querySelector('pre code');
    if (!code) return;
    copyText(code.textContent).then(function (ok) {
      if (ok) {
        flashButton(button, 'Copied');
        announce('Code copied to the clipboard');
      } else {
        // Last resort: select the code so Ctrl+C / long-press copies it.
        var range = document.createRange();
        range.selectNodeContents(code);
        var selection = window.getSelection();
        selection.removeAllRanges();
        selection.addRange(range);
        flashButton(button, 'Press Ctrl+C');
        announce('Code selected; press Control C to copy');
      }
    });
  });

  global.ChatMarkdown = { render: render, renderInline: renderInline, copyText: copyText, announce: announce, safeUrl: safeUrl };
})(window);
