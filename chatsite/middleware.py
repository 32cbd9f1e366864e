"""Small pieces of HTTP policy: static files, pages and JSON are not cached; the client's address."""

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.conf import settings
from django.utils.cache import patch_cache_control
from django.utils.decorators import sync_and_async_middleware
from whitenoise.middleware import WhiteNoiseMiddleware


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

    async def __acall__(self, request):
        if self.autorefresh:  # DEBUG: looks on disk each time
            static_file = await sync_to_async(self.find_file, thread_sensitive=False)(request.path_info)
        else:
            static_file = self.files.get(request.path_info)
        if static_file is None:
            return await self.get_response(request)
        return await sync_to_async(self.serve, thread_sensitive=False)(static_file, request)
