"""The WebSocket side of the site: origin check, session auth, then the chat consumer.

Kept apart from asgi.py so tests can drive it without starting the server
(which loads the model).
"""

import logging
from urllib.parse import urlsplit

from channels.auth import AuthMiddlewareStack
from channels.generic.websocket import WebsocketConsumer
from channels.routing import URLRouter
from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.http.request import split_domain_port, validate_host
from django.urls import re_path

from conversations.live import routing

logger = logging.getLogger("chatsite.websocket")
DEFAULT_PORTS = {"http": "80", "https": "443"}


def _origin(scheme: str, netloc: str) -> str:
    host, port = split_domain_port(netloc.lower())
    return f"{host}:{port or DEFAULT_PORTS.get(scheme, '')}"


def same_origin(scope) -> bool:
    """The Origin is this site: its host is allowed and host and port match the Host header.

    Scheme aside (a TLS proxy may sit in front), the page must have come from
    the host and port the socket was opened to. Only in-process callers (the
    tests' communicator) send no Host; they are checked against ALLOWED_HOSTS.
    """
    headers = dict(scope.get("headers") or [])
    raw = headers.get(b"origin", b"").decode("latin1")
    if not raw:
        return False
    if raw in settings.CSRF_TRUSTED_ORIGINS:
        return True
    origin = urlsplit(raw)
    if origin.scheme not in DEFAULT_PORTS or not origin.netloc:
        return False
    host, _port = split_domain_port(origin.netloc.lower())
    if not validate_host(host, settings.ALLOWED_HOSTS):
        return False
    sent_host = headers.get(b"host", b"").decode("latin1")
    if not sent_host:
        return True
    return _origin(origin.scheme, origin.netloc) == _origin(origin.scheme, sent_host)


class SameOriginValidator:
    """Refuses a WebSocket handshake whose Origin is not this site (host and port)."""

    def __init__(self, application):
        self.application = application

    async def __call__(self, scope, receive, send):
        if scope["type"] == "websocket" and not same_origin(scope):
            return await WebsocketDenier()(scope, receive, send)
        return await self.application(scope, receive, send)


class Unroutable(WebsocketConsumer):
    """Any other WebSocket path: refused at the handshake, logged as one line."""

    def connect(self):
        logger.warning("WebSocket refused: no route for %s", self.scope.get("path", "?"))
        self.close()


websocket_application = SameOriginValidator(
    AuthMiddlewareStack(URLRouter([*routing.websocket_urlpatterns, re_path(r"", Unroutable.as_asgi())]))
)
