/* A markdown-it plugin that finds $…$ (inline) and $$…$$ (display) math.
 *
 * It only marks the TeX: <span class="math-inline"> / <div class="math-block">
 * holding the escaped source. markdown.js typesets them with KaTeX, which it
 * loads only when a message has math. Like pandoc, `$` opens only before a
 * non-space and closes only after a non-space not followed by a digit, so
 * "$5 and $6" stays text; `\$` is a dollar sign.
 */

function isSpace(ch) { return ch === undefined || /\s/.test(ch); }

/** The end of the closing delimiter at or after `from`, skipping `\$`; -1 if none. */
function findClose(src, from, delimiter) {
  let at = from;
  for (;;) {
    at = src.indexOf(delimiter, at);
    if (at === -1) return -1;
    if (src[at - 1] !== '\\') return at;
    at += 1;
  }
}

function mathInline(state, silent) {
  const src = state.src;
  const pos = state.pos;
  if (src[pos] !== '$') return false;
  const display = src[pos + 1] === '$';
  const delimiter = display ? '$$' : '$';
  const start = pos + delimiter.length;
  if (!display && isSpace(src[start])) return false;
  const end = findClose(src, start, delimiter);
  if (end === -1 || end === start || end > state.posMax) return false;
  if (!display && (isSpace(src[end - 1]) || /\d/.test(src[end + 1] || ''))) return false;
  if (!silent) {
    const token = state.push(display ? 'math_display' : 'math_inline', '', 0);
    token.content = src.slice(start, end);
  }
  state.pos = end + delimiter.length;
  return true;
}

/** `$$` at the start of a line, up to a line ending in `$$` (or the end: a reply still streaming). */
function mathBlock(state, startLine, endLine, silent) {
  const begin = state.bMarks[startLine] + state.tShift[startLine];
  if (state.sCount[startLine] - state.blkIndent >= 4) return false;
  if (state.src.slice(begin, begin + 2) !== '$$') return false;
  const first = state.src.slice(begin + 2, state.eMarks[startLine]).trim();
  if (first.endsWith('$$') && first.length >= 2) {
    if (first.slice(0, -2).includes('$$')) return false;
    if (silent) return true;
    return emit(state, startLine, startLine + 1, first.slice(0, -2));
  }
  if (first.includes('$$')) return false;
  if (silent) return true;
  const lines = first ? [first] : [];
  let line = startLine + 1;
  for (; line < endLine; line++) {
    const text = state.src.slice(state.bMarks[line] + state.tShift[line], state.eMarks[line]);
    if (state.sCount[line] < state.blkIndent && text) break;
    if (text.trim().endsWith('$$')) {
      lines.push(text.trim().slice(0, -2));
      line += 1;
      break;
    }
    lines.push(text);
  }
  return emit(state, startLine, line, lines.join('\n'));
}

function emit(state, startLine, nextLine, content) {
  const token = state.push('math_block', 'div', 0);
  token.block = true;
  token.content = content.trim();
  token.map = [startLine, nextLine];
  state.line = nextLine;
  return true;
}

export function mathPlugin(md) {
  const escape = md.utils.escapeHtml;
  md.inline.ruler.after('escape', 'math_inline', mathInline);
  md.block.ruler.before('fence', 'math_block', mathBlock, { alt: ['paragraph', 'reference', 'blockquote', 'list'] });
  md.renderer.rules.math_inline = (tokens, idx) => '<span class="math-inline">' + escape(tokens[idx].content) + '</span>';
  md.renderer.rules.math_display = (tokens, idx) => '<span class="math-block">' + escape(tokens[idx].content) + '</span>';
  md.renderer.rules.math_block = (tokens, idx) => '<div class="math-block">' + escape(tokens[idx].content) + '</div>\n';
}
