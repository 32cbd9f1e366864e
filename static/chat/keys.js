/* The API-keys page: a Copy button for the new key, which is shown this once. */
import { announce, copyText, flashButton } from './clipboard.js';

const button = document.getElementById('copy-key');
if (button) {
  button.addEventListener('click', () => {
    copyText(document.getElementById('new-key').textContent).then((ok) => {
      flashButton(button, ok ? 'Copied' : 'Copy failed');
      announce(ok ? 'The key is copied to the clipboard' : 'Could not copy: select the key and copy it');
    });
  });
}
document.documentElement.setAttribute('data-ready', '1');  // tests wait for this
