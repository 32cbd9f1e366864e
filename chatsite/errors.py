"""The site's error answers (Django's handler404, handler403, handler500 and CSRF_FAILURE_VIEW).

A page gets the site's own look and a way back; a JSON endpoint gets JSON:
the site's `{"error": ...}` under /api/, OpenAI's shape under /v1/, and
either for a client that asks for JSON (`Accept: application/json`).
Django's defaults answer every one of them with a bare HTML page.
"""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.template import loader

from conversations.api.openai_format import status_error

PAGES = {
    400: ("Bad request", "The request could not be read."),
    403: ("Not allowed", "You may not open this page."),
    404: ("Page not found", "There is nothing at this address. The chat may have been deleted, or the link mistyped."),
    500: ("Something went wrong", "The server failed to answer. Try again in a moment; your chats are safe."),
}
CSRF_FAILED = (
    "The form had expired or came from another site, so it was not sent. Go back, reload the page and try again."
)


def wants_json(request: HttpRequest) -> bool:
    """Whether the error goes out as JSON: an API URL, or a client that asks for JSON rather than a page."""
    if request.path.startswith(("/api/", "/v1/")):
        return True
    accept = request.headers.get("Accept", "")
    return "application/json" in accept and "text/html" not in accept


def answer(request: HttpRequest, status: int, message: str = "") -> HttpResponse:
    title, default = PAGES[status]
    message = message or default
    if request.path.startswith("/v1/"):
        return JsonResponse(status_error(message, status), status=status)
    if wants_json(request):
        return JsonResponse({"error": message}, status=status)
    # No request context: a 500 may come from a context processor or the session, so the page needs neither.
    page = loader.get_template("errors/error.html").render({"status": status, "title": title, "message": message})
    return HttpResponse(page, status=status)


def bad_request(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    return answer(request, 400)


def permission_denied(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    return answer(request, 403)


def page_not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    return answer(request, 404)


def server_error(request: HttpRequest) -> HttpResponse:
    return answer(request, 500)


def csrf_failure(request: HttpRequest, reason: str = "") -> HttpResponse:
    """The CSRF check refused a form (settings.CSRF_FAILURE_VIEW); `reason` is Django's, for the log only."""
    return answer(request, 403, CSRF_FAILED)
