"""The WebSocket side of the site: origin check, session auth, then the chat consumer.

Kept apart from asgi.py so tests can drive it without starting the server
(which loads the model).
"""

from channels.auth import AuthMiddlewareStack
from channels.routing import URLRouter
from channels.security.websocket import AllowedHostsOriginValidator

from conversations import routing

websocket_application = AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(routing.websocket_urlpatterns)))
