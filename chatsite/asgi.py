"""The ASGI application daphne serves: HTTP pages and the chat WebSocket.

Importing this module is what "server start-up" means: settings are checked
(a bad one ends the process with one line), replies a previous run left
streaming are marked interrupted, and the model is loaded once.
"""

import os
import sys

from django.core.exceptions import ImproperlyConfigured

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")

try:
    from django.core.asgi import get_asgi_application

    django_application = get_asgi_application()
except ImproperlyConfigured as exc:
    sys.exit(f"chatsite: {exc}")

from channels.routing import ProtocolTypeRouter  # noqa: E402  (needs Django set up)

from chatsite.middleware import http_application  # noqa: E402
from chatsite.routing import websocket_application  # noqa: E402
from conversations.live import process, shutdown  # noqa: E402

process.start_web_process()
if "daphne.server" in sys.modules:
    shutdown.install()  # SIGTERM: finish or interrupt live replies, then stop (docs/deploy.md)

application = ProtocolTypeRouter(
    {
        # Static files are answered by whitenoise's middleware (compressed,
        # hashed names, long cache), from what `collectstatic` gathered.
        "http": http_application(django_application),
        "websocket": websocket_application,
    }
)
