/* A shared snapshot's page (/s/<token>/): each message's text through the chat's own renderer
 * (markdown.js: markdown-it, DOMPurify, the link policy), so a share is exactly as safe as the chat. */
import { render } from './markdown.js';

for (const body of document.querySelectorAll('.shared-transcript .md')) render(body.textContent, body);
