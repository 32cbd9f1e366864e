"""Small pieces of HTTP policy: pages and JSON are not cached; the client's address."""

from asgiref.sync import iscoroutinefunction
from django.conf import settings
from django.utils.cache import patch_cache_control
from django.utils.decorators import sync_and_async_middleware


def _no_store(response):
    # Chat pages and the API carry private transcripts: never kept by a
    # browser or proxy cache. Static files (whitenoise, earlier) are not affected.
    if not response.has_header("Cache-Control"):
        patch_cache_control(response, no_store=True, private=True)
    return response


@sync_and_async_middleware
def no_store(get_response):
    if iscoroutinefunction(get_response):

        async def middleware(request):
            return _no_store(await get_response(request))

    else:

        def middleware(request):
            return _no_store(get_response(request))

    return middleware


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
