"""Small pieces of HTTP policy: static files, pages and JSON are not cached; the client's address; the
largest body a URL takes; errors under /v1/ in OpenAI's shape."""

import json

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.conf import settings
from django.urls import reverse
from django.utils.cache import patch_cache_control
from django.utils.decorators import sync_and_async_middleware
from whitenoise.middleware import WhiteNoiseMiddleware

from conversations.api.openai_format import status_error


def _no_store(response):
    # Chat pages and the API carry private transcripts: never kept by a
    # browser or proxy cache. Static files (whitenoise, earlier) are not affected.
    if not response.has_header("Cache-Control"):
        patch_cache_control(response, no_store=True, private=True)
    return response


@sync_and_async_middleware
def no_store(get_response):
    async def async_middleware(request):
        return _no_store(await get_response(request))

    def sync_middleware(request):
        return _no_store(get_response(request))

    return async_middleware if iscoroutinefunction(get_response) else sync_middleware


def client_ip(request) -> str:
    """The client's address for login throttling.

    Behind the HTTPS proxy (CHATSITE_HTTPS=1) REMOTE_ADDR is the proxy; the
    client is the last X-Forwarded-For entry, the one the proxy itself added
    (entries to its left come from the client and could be forged).
    """
    if settings.CHATSITE_HTTPS:
        forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
        last = forwarded.rsplit(",", 1)[-1].strip()
        if last:
            return last
    return request.META.get("REMOTE_ADDR", "")


# Static folders this process has read: (root, URL prefix) -> whitenoise's files under it.
_scanned: dict[tuple[str, str], dict] = {}


class StaticFiles(WhiteNoiseMiddleware):
    """whitenoise's middleware, able to run in an async chain.

    WhiteNoiseMiddleware 6 is sync-only, and one sync-only middleware makes
    Django run every view behind it, async ones included, through
    async_to_sync in a worker thread: the API's server-sent events then run
    on another event loop than the channel layer's, and hang. Looking a file
    up is a dict lookup; opening it is done off the loop.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response, settings=settings) -> None:
        super().__init__(get_response, settings)
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request):
        if self.is_async:
            return self.__acall__(request)
        return super().__call__(request)

    def update_files_dictionary(self, root, prefix) -> None:
        # Reading var/static (800 files and their compressed forms) takes 40 ms. A server builds its
        # middleware once, but Django's test client builds it for every client, so the suite read
        # the same unchanging folder hundreds of times; now each process reads it once. (In DEBUG,
        # with autorefresh, whitenoise looks files up on disk instead and never calls this.)
        key = (root, prefix)
        if key in _scanned:
            self.files.update(_scanned[key])
            return
        before = set(self.files)
        super().update_files_dictionary(root, prefix)
        _scanned[key] = {url: file for url, file in self.files.items() if url not in before}

    async def __acall__(self, request):
        if self.autorefresh:  # DEBUG: looks on disk each time
            static_file = await sync_to_async(self.find_file, thread_sensitive=False)(request.path_info)
        else:
            static_file = self.files.get(request.path_info)
        if static_file is None:
            return await self.get_response(request)
        return await sync_to_async(self.serve, thread_sensitive=False)(static_file, request)


# ASGI wrappers around Django's HTTP application (chatsite.asgi): they act on
# what Django answers before any middleware runs, or without Django at all.

MULTIPART_SLACK = 64 * 1024  # a form's boundaries and headers around its one file
API_ERROR_MESSAGES = {
    400: "The request could not be read.",
    404: "Unknown request URL.",
    405: "Method not allowed.",
    413: "The request body is too large.",
}


def http_application(django_application):
    """What daphne serves over HTTP: Django behind the body limit, errors under /v1/ in OpenAI's shape."""
    return OpenAIErrors(BodyLimit(django_application))


def body_limit(path: str) -> int | None:
    """The most bytes a request to `path` may send (None: no limit)."""
    if path == reverse("import"):
        return settings.CHAT_IMPORT_MAX_MB * 1024 * 1024 + MULTIPART_SLACK
    return settings.DATA_UPLOAD_MAX_MEMORY_SIZE


class BodyLimit:
    """Refuses a request whose Content-Length is over what its URL takes, before a byte of it is read.

    Django reads a whole body (to memory, then to a temporary file, then
    through the multipart parser) before any view can look at its size, so
    a refused 65 MB upload still cost its size several times over. The
    declared length decides here instead; Django's own limits still hold
    for a body sent without one.
    """

    def __init__(self, application) -> None:
        self.application = application

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            limit = body_limit(scope["path"])
            length = _content_length(scope)
            if limit is not None and length is not None and length > limit:
                await _answer(send, scope, 413, f"The request body is larger than {limit} bytes.")
                return
        await self.application(scope, receive, send)


class OpenAIErrors:
    """Under /v1/, an error page that the API's views did not make (Django's 400, 404 or 500, the body
    limit's 413) goes out in OpenAI's shape, so a client library can read it."""

    def __init__(self, application) -> None:
        self.application = application

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await self.application(scope, receive, send)
            return
        held: dict | None = None

        async def send_shaped(message) -> None:
            nonlocal held
            if message["type"] == "http.response.start" and message["status"] >= 400:
                if not _header(message, b"content-type").startswith(b"application/json"):
                    held = message  # its body is replaced below
                    return
            if held is not None and message["type"] == "http.response.body":
                if not message.get("more_body"):
                    await _answer(send, scope, held["status"], API_ERROR_MESSAGES.get(held["status"], ""))
                return
            await send(message)

        await self.application(scope, receive, send_shaped)


def _header(message, name: bytes) -> bytes:
    """A header of an ASGI scope or response start; names compared ignoring case (Django sends "Content-Type")."""
    for key, value in message.get("headers") or []:
        if key.lower() == name:
            return value
    return b""


def _content_length(scope) -> int | None:
    length = _header(scope, b"content-length")
    return int(length) if length.isdigit() else None


async def _answer(send, scope, status: int, message: str) -> None:
    """An error as its URL's clients read them: OpenAI's shape under /v1/, the site's JSON when asked, else text."""
    message = message or f"The request failed with HTTP status {status}."
    accept = _header(scope, b"accept")
    if scope["path"].startswith("/v1/"):
        body, content_type = json.dumps(status_error(message, status)).encode(), b"application/json"
    elif b"application/json" in accept:
        body, content_type = json.dumps({"error": message}).encode(), b"application/json"
    else:
        body, content_type = message.encode(), b"text/plain; charset=utf-8"
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
