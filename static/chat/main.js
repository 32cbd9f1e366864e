/* The chat page's entry point: wires the modules together.
 *
 *   sidebar.js     the chat list (drawer on narrow screens, titles)
 *   panels.js      settings drawer, menus, dialogs, dismissable alerts
 *   transcript.js  message bubbles: rendering, status line, actions
 *   composer.js    the message box, Send/Stop, settings values, errors
 *   socket.js      the WebSocket, reconnection, syncing with the stored transcript
 *   branches.js    edit and resend, "‹ 2 / 3 ›" variants, following the active path
 *   markdown.js    message text to safe DOM (markdown-it, DOMPurify, highlight.js, KaTeX)
 *   feedback.js    thumbs up / down and a comment on replies
 *   earlier.js     a long transcript's earlier pages, loaded as the reader scrolls up
 *   usage.js       the day's token use under the composer
 *   summary.js     "Earlier messages summarised" where a long chat's summary applies
 *
 * Message text only reaches the DOM through markdown.js.
 */
import { isNarrow } from './dom.js';
import { initPanels } from './panels.js';
import { initSidebar, closeSidebar, reloadList } from './sidebar.js';
import { initRows } from './rows.js';
import { initTranscript, onAction } from './transcript.js';
import { continueReply, initComposer, input, regenerate, updateComposer } from './composer.js';
import { initSocket, onFrame } from './socket.js';
import { initBranches, refreshBranches } from './branches.js';
import { initFeedback } from './feedback.js';
import { initEarlier } from './earlier.js';
import { initUsage } from './usage.js';
import { initSummary } from './summary.js';
import { onChange } from './state.js';

initSidebar();
initRows({ reload: reloadList });
initPanels({ closeSidebar });
initTranscript();
initComposer();
onAction('regenerate', regenerate);
onAction('continue', continueReply);
onChange(updateComposer);
onChange(refreshBranches);
updateComposer();
initBranches(onFrame);
initSummary(onFrame);
initSocket();
initFeedback();
initEarlier();
initUsage();
if (input && !isNarrow()) input.focus({ preventScroll: true });
document.documentElement.setAttribute('data-ready', '1');  // tests wait for this
